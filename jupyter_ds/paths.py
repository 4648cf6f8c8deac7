"""Paths from requests, confined to the server root.

Every path a client sends is relative to the folder the Jupyter server serves. These
helpers refuse absolute paths and ``..`` climbs before touching the disk, then resolve
symlinks and check that the real path is still under the (real) root, so that neither a
crafted string nor a symlink reaches a file the server does not serve.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from jupyter_ds.errors import ApiError, bad_request

MAX_NAME_BYTES = 255  # NAME_MAX of Linux, macOS and Windows file systems
MAX_PATH_BYTES = 4000  # under PATH_MAX (4096) once joined to the root


def forbidden(message: str, field: str | None = None) -> ApiError:
    return ApiError(403, "forbidden", message, field=field)


def normalise_relative(
    path: str, field: str = "path", *, allow_root: bool = False, status: int = 400
) -> str:
    """``path`` normalised (``/`` separators, no ``.``), or an error naming ``field``.

    Absolute paths (POSIX, Windows drive or UNC) and ``..`` climbs above the root are
    refused with ``status`` (400 where a bad string is a client mistake, 403 where it is
    an attempt to reach outside). ``""`` and ``"."`` mean the root when ``allow_root``.
    """

    def refuse(message: str) -> ApiError:
        return bad_request(message, field) if status == 400 else forbidden(message, field)

    if path.startswith("RTC:"):  # JupyterLab's collaborative drive prefix
        path = path[len("RTC:"):]
    if "\x00" in path:
        raise bad_request(f"field '{field}' contains a NUL character", field)
    if path in ("", ".", "./"):
        if allow_root:
            return "."
        raise bad_request(f"field '{field}' is empty", field)
    if path.startswith(("/", "\\")) or PureWindowsPath(path).drive or os.path.isabs(path):
        raise refuse(f"field '{field}' must be relative to the server root")
    normal = posixpath.normpath(path.replace("\\", "/") if os.sep == "\\" else path)
    if normal == ".." or normal.startswith("../"):
        raise refuse(f"field '{field}' leaves the server root")
    # The file system refuses these (ENAMETOOLONG), deep inside a stat or an open: say so
    # here, as a client error.
    if len(normal.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES or any(
        len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in normal.split("/")
    ):
        raise bad_request(f"field '{field}' is too long a path (at most {MAX_NAME_BYTES} bytes "
                          f"a name, {MAX_PATH_BYTES} in all)", field)
    return normal


def is_within(root: str | os.PathLike[str], real: str | os.PathLike[str]) -> bool:
    """Whether the resolved path ``real`` is ``root`` or below it (both already real)."""
    root_p, real_p = Path(root), Path(real)
    return real_p == root_p or root_p in real_p.parents


@dataclass(frozen=True)
class RootPath:
    """A client's path joined to the server root: as sent (normalised) and as resolved.

    Callers differ in what a path that resolves outside the root means (an error for a
    write, "no context" for a notebook Jupyter itself would follow), so :func:`locate`
    reports it in ``inside`` instead of deciding.
    """

    root: Path  # the real server root
    normal: str  # the path as sent: relative, "/" separators, no "." or ".." parts
    real: Path  # the path with every symlink resolved (it need not exist)

    @property
    def inside(self) -> bool:
        return is_within(self.root, self.real)

    @property
    def real_relative(self) -> str:
        """``real`` relative to the root, "/" separated; only meaningful when ``inside``."""
        return self.real.relative_to(self.root).as_posix()


def locate(
    root_dir: str | os.PathLike[str],
    path: str,
    field: str = "path",
    *,
    allow_root: bool = True,
    status: int = 400,
) -> RootPath:
    """``path`` from a request joined to ``root_dir``, normalised, and resolved.

    The one place where a client's path meets the disk: every reader and writer of files
    named by a request goes through here (or :func:`resolve_under_root`), so there is
    one rule for absolute paths, ``..`` climbs and symlinks. A bad string is an error
    (``status`` for one that reaches outside, see :func:`normalise_relative`); a path that
    only leaves the root through a symlink is not, see :attr:`RootPath.inside`.
    """
    normal = normalise_relative(path, field, allow_root=allow_root, status=status)
    root = Path(os.path.realpath(root_dir))
    return RootPath(root, normal, Path(os.path.realpath(root / normal)))


def resolve_under_root(
    root_dir: str | os.PathLike[str],
    path: str,
    field: str = "path",
    *,
    allow_root: bool = True,
    status: int = 403,
) -> Path:
    """The real path of ``path`` under ``root_dir``; 403 naming ``field`` if it leaves it.

    Unlike Jupyter's contents API, symlinks that lead outside the root are refused here:
    the callers (git, test insertion) act on what the link points to. ``status`` is the
    code for a string that climbs out or is absolute (400 where the API has always called
    that a malformed value); a symlink out of the root is always a 403.
    """
    where = locate(root_dir, path, field, allow_root=allow_root, status=status)
    if not where.inside:
        raise forbidden(f"field '{field}' resolves outside the server root (a symlink?)", field)
    return where.real


def hidden_part(relative: str) -> str | None:
    """The first component of the "/"-separated ``relative`` that is hidden, if any.

    Jupyter's rule (``ContentsManager.allow_hidden``): a name starting with ``.`` is
    hidden, and so is everything below it. That is where a server keeps what runs
    unasked (``.ipython/.../startup``, ``.jupyter``, ``.git/hooks``) and its keys.
    """
    return next((part for part in relative.split("/") if part.startswith(".")
                 and part not in (".", "..")), None)


#: Globs of files no API call may touch (``git_exclude``'s default): credentials and keys.
DEFAULT_EXCLUDE = (
    ".ssh", ".gnupg", ".git-credentials", ".netrc", ".aws", ".azure", ".kube", ".docker",
    ".pypirc", ".npmrc", "id_rsa*", "id_ed25519*", "*.pem", "*.key",
)


def excluded_by(relative: str, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` (the ``git_exclude`` setting) that ``relative`` matches.

    A pattern without ``/`` matches any component (``.ssh``, ``*.pem``); one with ``/``
    matches the whole "/"-separated path relative to the server root.
    """
    parts = relative.split("/")
    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern.strip("/")):
                return pattern
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return pattern
    return None
