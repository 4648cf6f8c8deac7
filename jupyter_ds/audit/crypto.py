"""AES-256-GCM encryption of audit lines at rest, with key ids so that keys can rotate.

Each line is encrypted on its own (the log is append-only, one request per line) as::

    {"v": 1, "kid": "<key id>", "nonce": "<base64 96 bits>", "ct": "<base64 ciphertext+tag>"}

- A fresh random 96-bit nonce per line (GCM's standard size; random nonces are safe far
  beyond any audit log's line count under one key).
- The associated data binds the format version and the key id, so editing either field
  fails authentication instead of misleading the reader.
- The key id is derived from the key (a truncated SHA-256 with a domain label), so it needs
  no bookkeeping, cannot disagree with the key, and reveals nothing about it.

Rotation: the :class:`Keyring` writes with its *current* key and reads with any key it
holds. To rotate, put the new key first and keep the old ones after it for as long as lines
written with them must stay readable. A line whose key id is not in the keyring raises
:class:`AuditKeyMissingError` naming that id: a lost key is never a silently shorter report.

Keys are 32 bytes given as 64 hex digits or base64 (standard or URL-safe), from an
environment variable (``JUPYTER_DS_AUDIT_KEY``, plus ``JUPYTER_DS_AUDIT_OLD_KEYS``,
comma- or space-separated) or a key file (one key per line, current first, ``#`` comments;
or exactly 32 raw bytes). A malformed key is an :class:`AuditKeyConfigError` when it is
loaded, never later.

With no key configured the server does not fall back to plaintext: it generates a key file,
``audit.key`` in the log's folder (:func:`ensure_key_file`), 0600, and reuses it on every
later start; the CLI finds it there too (:func:`find_keyring`). Because that file is the
only thing between the log and its reader, it is held to a stricter standard than a key
file an operator configures: if it is readable by group or others, or owned by another
user, it is refused (an operator's own ``--key-file`` only gets a warning, as before).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ds.audit.errors import (
    AuditFormatError,
    AuditIntegrityError,
    AuditKeyConfigError,
    AuditKeyMissingError,
)

log = logging.getLogger("jupyter_ds.audit")

FORMAT_VERSION = 1
KEY_ENV = "JUPYTER_DS_AUDIT_KEY"
OLD_KEYS_ENV = "JUPYTER_DS_AUDIT_OLD_KEYS"
KEY_BYTES = 32
GENERATED_KEY_NAME = "audit.key"
NONCE_BYTES = 12
_ENVELOPE_KEYS = frozenset({"v", "kid", "nonce", "ct"})
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")


def key_id(key: bytes) -> str:
    """A short, stable id for ``key``: what each line records, and what errors name."""
    return hashlib.sha256(b"jupyter-ds audit key id\0" + key).hexdigest()[:16]


@dataclass(frozen=True)
class AuditKey:
    key: bytes = field(repr=False)
    kid: str = ""

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise AuditKeyConfigError(
                f"audit key must be {KEY_BYTES} bytes (AES-256), got {len(self.key)}"
            )
        if not self.kid:
            object.__setattr__(self, "kid", key_id(self.key))


def parse_key(text: str, source: str) -> AuditKey:
    """A key from its text form (hex or base64); errors name ``source``, never the key."""
    text = text.strip()
    if not text:
        raise AuditKeyConfigError(f"audit key from {source} is empty")
    if _HEX_KEY.fullmatch(text):
        return AuditKey(bytes.fromhex(text))
    try:
        padded = text + "=" * (-len(text) % 4)
        alt = b"-_" if ("-" in text or "_" in text) else None
        raw = base64.b64decode(padded, altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        raise AuditKeyConfigError(
            f"audit key from {source} is neither 64 hex digits nor base64 "
            f"(generate one with `jupyter-ds audit keygen`)"
        ) from None
    if len(raw) != KEY_BYTES:
        raise AuditKeyConfigError(
            f"audit key from {source} decodes to {len(raw)} bytes; AES-256 needs {KEY_BYTES} "
            f"(generate one with `jupyter-ds audit keygen`)"
        )
    return AuditKey(raw)


def generate_key() -> str:
    """A new random key, base64-encoded, for the env var or the key file."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _aesgcm(key: bytes) -> Any:
    """AESGCM for ``key``; imported here so plain (unencrypted) auditing never needs it."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - a declared dependency
        raise AuditKeyConfigError(
            "an audit key is configured but the 'cryptography' package is not installed"
        ) from None
    return AESGCM(key)


def _aad(kid: str) -> bytes:
    return f"jupyter-ds-audit|v{FORMAT_VERSION}|{kid}".encode()


def is_encrypted(record: Mapping[str, Any]) -> bool:
    """Whether a parsed log line is an encrypted envelope rather than a plain record."""
    return set(record) == _ENVELOPE_KEYS


class Keyring:
    """The current key (writes) and older keys (reads only), looked up by key id."""

    def __init__(self, current: AuditKey, old: Iterable[AuditKey] = ()):
        self.current = current
        self._keys: dict[str, AuditKey] = {current.kid: current}
        for k in old:
            self._keys.setdefault(k.kid, k)
        self._ciphers = {kid: _aesgcm(k.key) for kid, k in self._keys.items()}

    def __repr__(self) -> str:
        return f"Keyring(current={self.current.kid!r}, kids={self.kids!r})"

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    # --- loading ----------------------------------------------------------------------
    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        var: str = KEY_ENV,
        old_var: str = OLD_KEYS_ENV,
    ) -> Keyring | None:
        """The keyring from ``$var`` (current) and ``$old_var`` (older keys); None if unset."""
        env = os.environ if environ is None else environ
        current = env.get(var, "").strip()
        old_text = env.get(old_var, "").strip()
        if not current:
            if old_text:
                raise AuditKeyConfigError(f"{old_var} is set but {var} (the current key) is not")
            return None
        old = [
            parse_key(t, f"{old_var} (entry {i})")
            for i, t in enumerate(re.split(r"[\s,]+", old_text), 1)
            if t
        ]
        return cls(parse_key(current, var), old)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """The keyring from a key file: current key first, older keys after it."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise AuditKeyConfigError(f"cannot read audit key file {p}: {exc.strerror}") from None
        _warn_if_readable_by_others(p)
        return cls.from_bytes(data, p)

    @classmethod
    def from_bytes(cls, data: bytes, p: Path) -> Keyring:
        """The keyring from a key file's content; ``p`` only names it in errors."""
        # 32 raw bytes, e.g. from `head -c 32 /dev/urandom`; 32 printable characters are a
        # passphrase typed by hand, far too weak to use as a key.
        if len(data) == KEY_BYTES and not data.decode("latin-1").isprintable():
            return cls(AuditKey(data))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AuditKeyConfigError(
                f"audit key file {p} is neither text keys nor {KEY_BYTES} raw bytes"
            ) from None
        keys = [
            parse_key(line, f"{p} line {n}")
            for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not keys:
            raise AuditKeyConfigError(f"audit key file {p} holds no key")
        return cls(keys[0], keys[1:])

    # --- lines ------------------------------------------------------------------------
    def encrypt_line(self, plaintext: str) -> str:
        """One plain JSON record -> one encrypted JSON line (no newline)."""
        nonce = os.urandom(NONCE_BYTES)
        kid = self.current.kid
        ct = self._ciphers[kid].encrypt(nonce, plaintext.encode("utf-8"), _aad(kid))
        return json.dumps(
            {
                "v": FORMAT_VERSION,
                "kid": kid,
                "nonce": base64.b64encode(nonce).decode("ascii"),
                "ct": base64.b64encode(ct).decode("ascii"),
            },
            separators=(",", ":"),
        )

    def decrypt_record(self, envelope: Mapping[str, Any], where: str = "line") -> str:
        """The plain record of an encrypted envelope; errors say ``where`` and the key id."""
        return decrypt_record(envelope, self, where)


def decrypt_record(
    envelope: Mapping[str, Any], keyring: Keyring | None, where: str = "line"
) -> str:
    """Decrypt one envelope with ``keyring`` (None: no key configured, which is an error)."""
    kid = envelope.get("kid")
    if envelope.get("v") != FORMAT_VERSION:
        raise AuditFormatError(
            f"{where}: unsupported audit format version {envelope.get('v')!r} "
            f"(this version reads {FORMAT_VERSION})"
        )
    if not isinstance(kid, str) or not kid:
        raise AuditIntegrityError(f"{where}: encrypted line has no key id")
    if keyring is None:
        raise AuditKeyMissingError(
            f"{where} is encrypted with key id {kid}, but no audit key is configured "
            f"(set {KEY_ENV} or pass --key-file)",
            kid,
        )
    cipher = keyring._ciphers.get(kid)
    if cipher is None:
        raise AuditKeyMissingError(
            f"{where} is encrypted with key id {kid}, which is not in the keyring "
            f"(loaded: {', '.join(keyring.kids)}); add that key as an old key to read it",
            kid,
        )
    try:
        nonce = base64.b64decode(str(envelope.get("nonce", "")), validate=True)
        ct = base64.b64decode(str(envelope.get("ct", "")), validate=True)
    except (binascii.Error, ValueError):
        raise AuditIntegrityError(
            f"{where}: nonce or ciphertext is not valid base64", kid
        ) from None
    if len(nonce) != NONCE_BYTES:
        raise AuditIntegrityError(f"{where}: nonce is {len(nonce)} bytes, not {NONCE_BYTES}", kid)
    from cryptography.exceptions import InvalidTag

    try:
        plain = cipher.decrypt(nonce, ct, _aad(kid))
    except InvalidTag:
        raise AuditIntegrityError(
            f"{where}: authentication failed with key id {kid}: the line was altered or "
            f"corrupted after it was written",
            kid,
        ) from None
    return plain.decode("utf-8")


def load_keyring(
    key_file: str | os.PathLike[str] | None = None,
    env_var: str = KEY_ENV,
    old_env_var: str = OLD_KEYS_ENV,
    environ: Mapping[str, str] | None = None,
) -> Keyring | None:
    """The configured keyring: the key file when given, else the env vars; None: no key.

    Call it once at start-up, so a malformed key stops the server or CLI with a clear
    :class:`AuditKeyConfigError` instead of failing on every request.
    """
    if key_file:
        return Keyring.from_file(key_file)
    return Keyring.from_env(environ, env_var, old_env_var)


def generated_key_path(log_path: str | os.PathLike[str]) -> Path:
    """Where the server keeps the key it generated for ``log_path``: next to the log."""
    return Path(log_path).expanduser().parent / GENERATED_KEY_NAME


_KEY_FILE_HEADER = (
    "# jupyter-ds audit log key (AES-256-GCM), generated {when}.\n"
    "# Current key first; older keys after it stay readable. Keep this file 0600 and\n"
    "# back it up: lines written with a lost key cannot be read by anyone.\n"
)


def read_strict_key_file(path: Path) -> Keyring:
    """Load the generated key file, refusing one that others could read or replace.

    The file is opened without following a symlink and checked on the open descriptor, so
    the checked file is the one read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise AuditKeyConfigError(
            f"cannot read audit key file {path}: {exc.strerror}"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuditKeyConfigError(f"audit key file {path} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditKeyConfigError(
                f"audit key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); anyone who can read it can read the "
                f"audit log. Run `chmod 600 {path}` (and consider rotating the key)"
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise AuditKeyConfigError(
                f"audit key file {path} belongs to another user (uid {st.st_uid}); "
                f"refusing a key someone else controls"
            )
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            data = fh.read()
    finally:
        if fd != -1:
            os.close(fd)
    return Keyring.from_bytes(data, path)


def ensure_key_file(path: str | os.PathLike[str]) -> tuple[Keyring, bool]:
    """The keyring of the generated key file at ``path``, creating it first if missing.

    Returns ``(keyring, created)``. Creation is atomic (a private temporary file hard-linked
    into place), so two servers starting at once end up with the same key, and a reader never
    sees a half-written file.
    """
    p = Path(path).expanduser()
    if not p.exists() and not p.is_symlink():
        try:
            created = _create_key_file(p)
        except OSError as exc:
            raise AuditKeyConfigError(
                f"cannot create the audit key file {p}: {exc.strerror or exc}; configure "
                f"audit_key_file or {KEY_ENV}, or set audit_encrypt=False for a plaintext log"
            ) from None
        if created:
            log.warning(
                "jupyter-ds: generated an audit log key at %s (no audit_key_file or %s was "
                "configured); back it up: without it the audit log cannot be read",
                p, KEY_ENV,
            )
            return read_strict_key_file(p), True
    return read_strict_key_file(p), False


def _create_key_file(p: Path) -> bool:
    """Write a new key file at ``p`` unless one appears first; True when this call made it."""
    p.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    text = _KEY_FILE_HEADER.format(when=_now_text()) + generate_key() + "\n"
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, p)  # fails if it exists: another server won the race
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def find_keyring(
    log_path: str | os.PathLike[str],
    key_file: str | os.PathLike[str] | None = None,
    env_var: str = KEY_ENV,
    old_env_var: str = OLD_KEYS_ENV,
    environ: Mapping[str, str] | None = None,
) -> Keyring | None:
    """What a reader (CLI, report) decrypts ``log_path`` with: the configured key, else the
    key the server generated next to the log, else None (a log written in plaintext)."""
    configured = load_keyring(key_file, env_var, old_env_var, environ)
    if configured is not None:
        return configured
    generated = generated_key_path(log_path)
    if generated.exists() or generated.is_symlink():
        return read_strict_key_file(generated)
    return None


def _now_text() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("audit key file %s is accessible by group or others (chmod 600 it)", path)
