"""Audit log: encryption at rest and key rotation, the writer, the report and its CLI."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jupyter_ds.audit import (
    AuditEvent,
    AuditFormatError,
    AuditIntegrityError,
    AuditKeyConfigError,
    AuditKeyMissingError,
    AuditLog,
    AuditLogMissingError,
    Keyring,
    build_report,
    open_audit_log,
    parse_when,
)
from jupyter_ds.audit.crypto import AuditKey, parse_key
from jupyter_ds.audit.report import format_table, log_files, percentile, read_records

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def new_key() -> AuditKey:
    return AuditKey(os.urandom(32))


def key_text(k: AuditKey) -> str:
    return base64.b64encode(k.key).decode()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def event(i: int = 0, **kw) -> AuditEvent:
    base = dict(endpoint="complete", user="ann", role="developer", request_id=f"r{i}",
                model="smollm2", tokens_in=10, tokens_out=5, latency_ms=100.0,
                time=T0 + dt.timedelta(minutes=i))
    base.update(kw)
    return AuditEvent(**base)


# --- keys -----------------------------------------------------------------------------


def test_key_forms_hex_base64_urlsafe_agree():
    raw = bytes(range(32))
    forms = [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(),
             base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    kids = {parse_key(f, "test").kid for f in forms}
    assert len(kids) == 1 and len(kids.pop()) == 16


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "empty"),
    (base64.b64encode(b"x" * 16).decode(), "decodes to 16 bytes"),
    (base64.b64encode(b"x" * 48).decode(), "decodes to 48 bytes"),
    ("ab" * 31, "decodes to"),  # 62 hex digits: not a hex key, base64 of the wrong size
    ("not a key!", "neither 64 hex digits nor base64"),
    ("correct horse battery staple", "neither"),
])
def test_malformed_key_is_a_clear_config_error(text: str, fragment: str):
    with pytest.raises(AuditKeyConfigError, match=fragment) as info:
        parse_key(text, "JUPYTER_DS_AUDIT_KEY")
    assert "JUPYTER_DS_AUDIT_KEY" in str(info.value)
    if text:
        assert text not in str(info.value)  # never echo key material


def test_env_keyring_and_its_errors():
    a, b = new_key(), new_key()
    assert Keyring.from_env({}) is None
    ring = Keyring.from_env({"JUPYTER_DS_AUDIT_KEY": key_text(b),
                             "JUPYTER_DS_AUDIT_OLD_KEYS": f" {a.key.hex()} ,"})
    assert ring is not None and ring.current.kid == b.kid and ring.kids == [b.kid, a.kid]
    with pytest.raises(AuditKeyConfigError, match="current key"):
        Keyring.from_env({"JUPYTER_DS_AUDIT_OLD_KEYS": key_text(a)})
    with pytest.raises(AuditKeyConfigError, match=r"JUPYTER_DS_AUDIT_OLD_KEYS \(entry 2\)"):
        Keyring.from_env({"JUPYTER_DS_AUDIT_KEY": key_text(b),
                          "JUPYTER_DS_AUDIT_OLD_KEYS": f"{key_text(a)},short"})
    with pytest.raises(AuditKeyConfigError):
        open_audit_log("/tmp/x.log", environ={"JUPYTER_DS_AUDIT_KEY": "dG9vIHNob3J0"})


def test_key_file_forms_and_errors(tmp_path: Path):
    a, b = new_key(), new_key()
    f = tmp_path / "keys"
    f.write_text(f"# rotated 2024-05\n{key_text(b)}\n\n# old\n{a.key.hex()}\n")
    ring = Keyring.from_file(f)
    assert ring.current.kid == b.kid and set(ring.kids) == {a.kid, b.kid}
    raw = tmp_path / "raw"
    raw.write_bytes(b"\x00\xff" + a.key[2:])
    assert Keyring.from_file(raw).current.key == b"\x00\xff" + a.key[2:]
    typed = tmp_path / "typed"
    typed.write_text("my-very-secret-passphrase-32chr!")  # 32 printable chars: not a key
    with pytest.raises(AuditKeyConfigError, match=f"{typed} line 1"):
        Keyring.from_file(typed)
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(AuditKeyConfigError, match="holds no key"):
        Keyring.from_file(tmp_path / "empty")
    with pytest.raises(AuditKeyConfigError, match="cannot read audit key file"):
        Keyring.from_file(tmp_path / "missing")


# --- encryption -----------------------------------------------------------------------


def test_round_trip_fresh_nonce_and_no_plaintext():
    ring = Keyring(new_key())
    text = json.dumps({"user": "ann", "input_sample": "print(42)"})
    one, two = ring.encrypt_line(text), ring.encrypt_line(text)
    env = json.loads(one)
    assert set(env) == {"v", "kid", "nonce", "ct"} and env["v"] == 1
    assert env["kid"] == ring.current.kid and len(base64.b64decode(env["nonce"])) == 12
    assert one != two and "ann" not in one and "print" not in one
    assert ring.decrypt_record(env) == text == ring.decrypt_record(json.loads(two))


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("field", ["ct_first", "ct_last", "nonce"])
def test_tampering_is_detected(field: str):
    ring = Keyring(new_key())
    env = json.loads(ring.encrypt_line('{"user": "ann"}'))
    if field == "nonce":
        env["nonce"] = _flip(env["nonce"], 0)
    else:
        env["ct"] = _flip(env["ct"], 0 if field == "ct_first" else -1)
    with pytest.raises(AuditIntegrityError, match=f"key id {ring.current.kid}.*altered"):
        ring.decrypt_record(env, "audit.log line 7")


def test_edited_header_fields_fail_too():
    a, b = new_key(), new_key()
    ring = Keyring(a, [b])
    env = json.loads(ring.encrypt_line("{}"))
    moved = dict(env, kid=b.kid)  # claims another key the ring holds: AAD mismatch
    with pytest.raises(AuditIntegrityError, match=b.kid):
        ring.decrypt_record(moved)
    with pytest.raises(AuditFormatError, match="version 2"):
        ring.decrypt_record(dict(env, v=2))
    with pytest.raises(AuditIntegrityError, match="base64"):
        ring.decrypt_record(dict(env, ct="***"))
    with pytest.raises(AuditIntegrityError, match="altered"):
        ring.decrypt_record(dict(env, ct=env["ct"][:8]))  # cut short


def test_unknown_key_id_is_named():
    a, b = new_key(), new_key()
    env = json.loads(Keyring(a).encrypt_line("{}"))
    with pytest.raises(AuditKeyMissingError, match=f"key id {a.kid}, which is not in") as info:
        Keyring(b).decrypt_record(env, "line 3")
    assert info.value.kid == a.kid and b.kid in str(info.value)


# --- writer ---------------------------------------------------------------------------


def test_plain_record_fields_and_file_mode(tmp_path: Path):
    path = tmp_path / "sub" / "audit.log"
    log = AuditLog(path)
    assert log.write(event(1, adapter="sql-lora", status=429, error_code="rate_limited",
                           input_sample="secret code"))
    rec = json.loads(lines(path)[0])
    assert rec == {
        "time": "2024-05-01T12:01:00.000Z", "request_id": "r1", "user": "ann",
        "role": "developer", "endpoint": "complete", "model": "smollm2", "adapter": "sql-lora",
        "tokens_in": 10, "tokens_out": 5, "latency_ms": 100.0, "status": 429,
        "error_code": "rate_limited",
    }  # samples are not captured unless asked for
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_looser_existing_file_is_tightened(tmp_path: Path):
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o644)
    AuditLog(path).write(event())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_samples_are_redacted_and_truncated(tmp_path: Path):
    path = tmp_path / "audit.log"
    log = AuditLog(path, capture_samples=True, sample_chars=60)
    prompt = "db = connect('postgres://etl:Tr0ub4dor@10.1.2.3/sales')  # ops@acme.io\n" + "x" * 200
    log.write(event(input_sample=prompt, output_sample="ok"))
    rec = json.loads(lines(path)[0])
    assert "Tr0ub4dor" not in path.read_text() and "10.1.2.3" not in path.read_text()
    assert rec["input_sample"].startswith("db = connect('postgres://etl:[REDACTED:password]@")
    assert len(rec["input_sample"]) <= 61 and rec["input_sample"].endswith("…")
    assert rec["output_sample"] == "ok"
    assert rec["redactions"] == {"connection_password": 1, "ipv4": 1, "email": 1}


def test_encrypted_lines_hide_everything(tmp_path: Path):
    path = tmp_path / "audit.log"
    ring = Keyring(new_key())
    log = AuditLog(path, keyring=ring, capture_samples=True)
    log.write(event(user="ann.secretive", input_sample="print('hello world')"))
    text = path.read_text()
    assert "ann.secretive" not in text and "hello" not in text and "complete" not in text
    env = json.loads(text)
    assert env["kid"] == ring.current.kid
    assert json.loads(ring.decrypt_record(env))["user"] == "ann.secretive"


def test_write_failures_never_raise(tmp_path: Path):
    (tmp_path / "a_file").write_text("")
    seen: list[BaseException] = []
    log = AuditLog(tmp_path / "a_file" / "audit.log", on_failure=seen.append)
    assert log.write(event()) is False and log.write(event()) is False
    assert log.failures == 2 and log.written == 0 and len(seen) == 2
    assert log.log_request(endpoint="explain", no_such_field=1) is False
    assert log.failures == 3

    def boom(exc: BaseException) -> None:
        raise RuntimeError("metrics down")

    log.on_failure = boom
    assert log.write(event()) is False  # even a failing callback stays inside


def _writers(log: AuditLog, threads: int, per_thread: int) -> None:
    def work(t: int) -> None:
        for i in range(per_thread):
            log.write(event(request_id=f"t{t}-{i}", input_sample="x = 1\n" * 20))

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()


@pytest.mark.parametrize("encrypted", [False, True])
def test_many_threads_every_line_intact(tmp_path: Path, encrypted: bool):
    path = tmp_path / "audit.log"
    ring = Keyring(new_key()) if encrypted else None
    log = AuditLog(path, keyring=ring, capture_samples=True, max_bytes=20_000)
    _writers(log, threads=12, per_thread=100)
    assert log.written == 1200 and log.failures == 0
    files = log_files(path)
    assert len(files) > 3  # rotated while threads were writing
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert all(f.stat().st_size <= 20_000 for f in files)
    ids = [r["request_id"] for r in read_records(path, ring)]
    assert sorted(ids) == sorted(f"t{t}-{i}" for t in range(12) for i in range(100))


# --- rotation of keys -----------------------------------------------------------------


def test_key_rotation_old_lines_stay_readable_and_a_lost_key_is_named(tmp_path: Path):
    path = tmp_path / "audit.log"
    a, b = new_key(), new_key()
    AuditLog(path, keyring=Keyring(a)).write(event(1, user="ann"))
    AuditLog(path, keyring=Keyring(b, [a])).write(event(2, user="bob"))
    kids = [json.loads(line)["kid"] for line in lines(path)]
    assert kids == [a.kid, b.kid]

    report = build_report(path, Keyring(b, [a]))
    assert set(report["by_user"]) == {"ann", "bob"} and report["lines"]["encrypted"] == 2

    with pytest.raises(AuditKeyMissingError, match=f"line 1 is encrypted with key id {a.kid}"):
        build_report(path, Keyring(b))
    with pytest.raises(AuditKeyMissingError, match="no audit key is configured"):
        build_report(path, None)


# --- report ---------------------------------------------------------------------------


def _sample_log(path: Path, ring: Keyring | None = None) -> None:
    log = AuditLog(path, keyring=ring)
    plan = [  # (user, model, endpoint, status, tokens_in, tokens_out, latency)
        ("ann", "smollm2", "complete", 200, 100, 10, 50.0),
        ("ann", "smollm2", "complete", 200, 120, 12, 70.0),
        ("ann", "smollm2", "explain", 200, 300, 200, 900.0),
        ("bob", "qwen", "complete", 200, 80, 8, 30.0),
        ("bob", "qwen", "tests", 504, 500, 0, 5000.0),
        ("bob", "qwen", "complete", 429, 0, 0, 1.0),
    ]
    for i, (user, model, endpoint, status, tin, tout, lat) in enumerate(plan):
        log.write(AuditEvent(endpoint=endpoint, user=user, model=model, status=status,
                             tokens_in=tin, tokens_out=tout, latency_ms=lat,
                             error_code=None if status == 200 else "err",
                             time=T0 + dt.timedelta(hours=i)))


def test_report_aggregates_per_user_model_endpoint(tmp_path: Path):
    path = tmp_path / "audit.log"
    _sample_log(path)
    r = build_report(path)
    assert r["total"] == {"requests": 6, "errors": 2, "tokens_in": 1100, "tokens_out": 230,
                          "latency_p50_ms": 50.0, "latency_p95_ms": 5000.0,
                          "generation_seconds": 6.051}
    assert r["by_user"]["ann"] == {"requests": 3, "errors": 0, "tokens_in": 520,
                                   "tokens_out": 222, "latency_p50_ms": 70.0,
                                   "latency_p95_ms": 900.0, "generation_seconds": 1.02}
    assert r["by_user"]["bob"]["errors"] == 2
    assert r["by_model"]["qwen"]["requests"] == 3
    assert r["by_endpoint"]["complete"]["requests"] == 4
    assert r["by_endpoint"]["complete"]["latency_p50_ms"] == 30.0
    assert r["lines"] == {"plain": 6, "encrypted": 0}
    table = format_table(r)
    for word in ("By user:", "By model:", "By endpoint:", "ann", "qwen", "explain", "TOTAL"):
        assert word in table


def test_report_time_window(tmp_path: Path):
    path = tmp_path / "audit.log"
    _sample_log(path)
    r = build_report(path, since=T0 + dt.timedelta(hours=1), until=T0 + dt.timedelta(hours=4))
    assert r["total"]["requests"] == 3  # hours 1, 2, 3: since inclusive, until exclusive
    assert r["first"].startswith("2024-05-01T13:00") and r["last"].startswith("2024-05-01T15:00")
    assert build_report(path, since=T0 + dt.timedelta(days=1))["total"]["requests"] == 0


def test_parse_when():
    now = dt.datetime(2024, 5, 8, 0, 0, tzinfo=UTC)
    assert parse_when("7d", now) == dt.datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_when("24h", now) == dt.datetime(2024, 5, 7, tzinfo=UTC)
    assert parse_when("90m", now) == dt.datetime(2024, 5, 7, 22, 30, tzinfo=UTC)
    assert parse_when("1w", now) == parse_when("7d", now)
    assert parse_when("2024-05-01") == dt.datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_when("2024-05-01T10:00:00Z") == dt.datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_when("2024-05-01T12:00+02:00") == dt.datetime(2024, 5, 1, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="relative time"):
        parse_when("last tuesday")


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0


def test_report_reads_rotated_files_and_mixed_lines(tmp_path: Path):
    path = tmp_path / "audit.log"
    ring = Keyring(new_key())
    AuditLog(path).write(event(0))  # written before a key was configured
    log = AuditLog(path, keyring=ring, max_bytes=300)
    for i in range(1, 6):
        log.write(event(i))
    assert len(log_files(path)) >= 3
    r = build_report(path, ring)
    assert r["total"]["requests"] == 6 and r["lines"] == {"plain": 1, "encrypted": 5}


def test_report_refuses_unreadable_lines(tmp_path: Path):
    path = tmp_path / "audit.log"
    AuditLog(path).write(event(0))
    with path.open("a") as fh:
        fh.write('{"time": "2024-05-01T12:00:00Z", "us\n')
    with pytest.raises(AuditFormatError, match=f"{path} line 2 is not JSON"):
        build_report(path)
    with pytest.raises(AuditLogMissingError, match="no audit log"):
        build_report(tmp_path / "nowhere.log")


# --- CLI ------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_DS_AUDIT")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "jupyter_ds.cli", "audit", *args],
                          capture_output=True, text=True, timeout=120, env=full_env)


def test_cli_report_end_to_end(tmp_path: Path):
    a, b = new_key(), new_key()
    path = tmp_path / "audit.log"
    _sample_log(path, Keyring(a))
    keys = tmp_path / "keys"
    keys.write_text(f"{key_text(b)}\n{key_text(a)}\n")
    keys.chmod(0o600)

    proc = run_cli("report", "--log", str(path), "--key-file", str(keys), "--json")
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)
    assert env["status"] == "success" and env["data"]["total"]["requests"] == 6
    assert env["data"]["by_user"]["bob"]["errors"] == 2

    proc = run_cli("report", "--since", "2024-05-01T15:00Z",
                   env={"JUPYTER_DS_AUDIT_LOG": str(path), "JUPYTER_DS_AUDIT_KEY": key_text(a)})
    assert proc.returncode == 0, proc.stderr
    assert "By endpoint:" in proc.stdout and "qwen" in proc.stdout and "smollm2" not in proc.stdout


def test_cli_wrong_key_is_a_clear_failure(tmp_path: Path):
    a, b = new_key(), new_key()
    path = tmp_path / "audit.log"
    _sample_log(path, Keyring(a))
    proc = run_cli("report", "--log", str(path), env={"JUPYTER_DS_AUDIT_KEY": key_text(b)})
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"key id {a.kid}" in proc.stderr and "Traceback" not in proc.stderr

    proc = run_cli("report", "--log", str(path), "--json",
                   env={"JUPYTER_DS_AUDIT_KEY": key_text(b)})
    assert proc.returncode == 1
    err = json.loads(proc.stdout)["error"]
    assert err["code"] == "audit_key_missing" and a.kid in err["message"]

    proc = run_cli("report", "--log", str(path), env={"JUPYTER_DS_AUDIT_KEY": "abc"})
    assert proc.returncode == 1 and "JUPYTER_DS_AUDIT_KEY" in proc.stderr


def test_cli_usage_errors_and_keygen(tmp_path: Path):
    proc = run_cli("report", "--since", "someday", "--log", str(tmp_path / "x"))
    assert proc.returncode == 2 and "relative time" in proc.stderr
    proc = run_cli("report", "--log", str(tmp_path / "x"))
    assert proc.returncode == 1 and "no audit log" in proc.stderr
    proc = run_cli("keygen")
    assert proc.returncode == 0
    assert len(parse_key(proc.stdout, "keygen").key) == 32


def test_cli_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch):
    from jupyter_ds.cli import main

    monkeypatch.delenv("JUPYTER_DS_AUDIT_KEY", raising=False)
    path = tmp_path / "audit.log"
    _sample_log(path)
    assert main(["audit", "report", "--log", str(path), "--since", "7d"]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out  # nothing in the last 7 days: an empty table, not an error


def test_open_audit_log_from_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    k = new_key()
    log = open_audit_log(tmp_path / "a.log", environ={"JUPYTER_DS_AUDIT_KEY": k.key.hex()},
                         capture_samples=True, sample_chars=100)
    assert log.encrypted and log.keyring.current.kid == k.kid and log.sample_chars == 100
    keys = tmp_path / "keys"
    keys.write_text(key_text(k))
    assert open_audit_log(tmp_path / "a.log", key_file=keys, environ={}).keyring is not None
    assert not (tmp_path / "audit.key").exists()  # a configured key generates nothing
    # No key configured: encrypted anyway, with a key generated next to the log (was: plain).
    assert open_audit_log(tmp_path / "a.log", environ={}).encrypted
    assert (tmp_path / "audit.key").exists()
    assert not open_audit_log(tmp_path / "b.log", environ={}, encrypt=False).encrypted
    monkeypatch.setenv("JUPYTER_DS_AUDIT_LOG", str(tmp_path / "env.log"))
    assert open_audit_log(environ={}).path == tmp_path / "env.log"


# --- hardening (issue 15): bounds, generated key, per-server logs ---------------------


@pytest.mark.parametrize("text", [
    "99999999999d", "999999999999999999999999s", "3000000d", "3651d", "522w", "87601h",
    "9" * 400 + "s", "1" * 65, "-1d", "7y", "1e3d", "0001-01-01T00:00+01:00", "",
])
def test_parse_when_is_bounded_and_only_raises_value_error(text: str):
    with pytest.raises(ValueError):
        parse_when(text, T0)


def test_parse_when_accepts_up_to_the_documented_maximum():
    from jupyter_ds.audit import MAX_LOOKBACK_DAYS

    assert MAX_LOOKBACK_DAYS == 3650
    assert parse_when("3650d", T0) == T0 - dt.timedelta(days=3650)
    assert parse_when("87600h", T0) == T0 - dt.timedelta(days=3650)
    assert parse_when("0001-01-01") == dt.datetime(1, 1, 1, tzinfo=UTC)  # exact dates: any


def test_cli_since_out_of_bounds_is_a_usage_error(tmp_path: Path):
    proc = run_cli("report", "--since", "99999999999d", "--log", str(tmp_path / "x"))
    assert proc.returncode == 2 and "3650d" in proc.stderr and "Traceback" not in proc.stderr


def test_generated_key_is_0600_reused_and_strict(tmp_path: Path):
    from jupyter_ds.audit import ensure_key_file

    key = tmp_path / "logs" / "audit.key"
    ring, created = ensure_key_file(key)
    assert created and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    again, created = ensure_key_file(key)
    assert not created and again.current.kid == ring.current.kid
    assert key.read_text().startswith("# jupyter-ds audit log key")
    assert not [p for p in key.parent.iterdir() if p.name != "audit.key"]  # no temp left

    key.chmod(0o640)
    with pytest.raises(AuditKeyConfigError, match="chmod 600"):
        ensure_key_file(key)
    key.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(key)
    with pytest.raises(AuditKeyConfigError, match="cannot read"):
        ensure_key_file(link)  # a symlink planted where the key goes is not followed
    (tmp_path / "a_file").write_text("")
    with pytest.raises(AuditKeyConfigError, match=r"cannot create.*audit_encrypt=False"):
        ensure_key_file(tmp_path / "a_file" / "audit.key")  # a start error, not plaintext


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs chown")
def test_generated_key_owned_by_someone_else_is_refused(tmp_path: Path):
    from jupyter_ds.audit import ensure_key_file

    key = tmp_path / "audit.key"
    ensure_key_file(key)
    os.chown(key, 4242, -1)
    with pytest.raises(AuditKeyConfigError, match="another user"):
        ensure_key_file(key)


def test_servers_starting_at_once_share_one_generated_key(tmp_path: Path):
    from jupyter_ds.audit import ensure_key_file

    key = tmp_path / "audit.key"
    kids: list[str] = []

    def start() -> None:
        kids.append(ensure_key_file(key)[0].current.kid)

    pool = [threading.Thread(target=start) for _ in range(8)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert len(kids) == 8 and len(set(kids)) == 1


def test_find_keyring_prefers_configured_then_generated(tmp_path: Path):
    from jupyter_ds.audit import ensure_key_file, find_keyring

    log = tmp_path / "audit-abc.log"
    assert find_keyring(log, environ={}) is None  # nothing generated: a plaintext log
    generated, _ = ensure_key_file(tmp_path / "audit.key")
    assert find_keyring(log, environ={}).current.kid == generated.current.kid
    k = new_key()
    ring = find_keyring(log, environ={"JUPYTER_DS_AUDIT_KEY": key_text(k)})
    assert ring.current.kid == k.kid


def test_default_log_is_per_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from jupyter_ds.audit import default_log_path, server_id

    monkeypatch.delenv("JUPYTER_DS_AUDIT_LOG", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a-link").symlink_to(tmp_path / "a")
    ids = {server_id(tmp_path / "a", 8888), server_id(tmp_path / "a", 8889),
           server_id(tmp_path / "b", 8888), server_id(tmp_path / "a", "/run/j.sock")}
    assert len(ids) == 4 and all(len(i) == 12 for i in ids)
    assert server_id(tmp_path / "a-link", 8888) == server_id(tmp_path / "a", 8888)
    one = default_log_path(server_id(tmp_path / "a", 8888))
    assert one.parent == tmp_path / "data" / "jupyter_ds"
    assert one.name == f"audit-{server_id(tmp_path / 'a', 8888)}.log"
    assert str(tmp_path) not in one.name  # the name spells out no folder
    monkeypatch.setenv("JUPYTER_DS_AUDIT_LOG", str(tmp_path / "shared.log"))
    assert default_log_path("abc") == tmp_path / "shared.log"  # explicit: shared on purpose


def test_records_carry_the_server_and_the_report_keeps_to_it(tmp_path: Path):
    path = tmp_path / "audit.log"
    AuditLog(path, server="aaaaaaaaaaaa").write(event(1, user="ann"))
    AuditLog(path, server="bbbbbbbbbbbb").write(event(2, user="bob"))
    AuditLog(path).write(event(3, user="old"))  # written before records had a server
    assert json.loads(lines(path)[0])["server"] == "aaaaaaaaaaaa"
    r = build_report(path, server="aaaaaaaaaaaa")
    assert set(r["by_user"]) == {"ann", "old"} and r["other_server_lines"] == 1
    assert r["server"] == "aaaaaaaaaaaa" and r["lines"] == {"plain": 3, "encrypted": 0}
    assert "left out: 1 lines of other servers" in format_table(r)
    everything = build_report(path)
    assert set(everything["by_user"]) == {"ann", "bob", "old"}
    assert everything["other_server_lines"] == 0


def test_report_names_the_log_by_name_only(tmp_path: Path):
    path = tmp_path / "audit.log"
    AuditLog(path).write(event(0))
    r = build_report(path)
    assert r["log"] == "audit.log" and str(tmp_path) not in json.dumps(r)
    assert f"Audit report for {path} " in format_table(r, path)  # the CLI's own terminal
    with path.open("a") as fh:
        fh.write("{oops\n")
    with pytest.raises(AuditFormatError) as info:
        build_report(path, full_paths=False)
    assert str(info.value).startswith("audit.log line 2") and str(tmp_path) not in str(info.value)
    with pytest.raises(AuditLogMissingError) as missing:
        build_report(tmp_path / "none.log", full_paths=False)
    assert str(tmp_path) not in str(missing.value)


def test_cli_reads_the_default_encrypted_log_without_flags(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    from jupyter_ds.audit import default_log_path, server_id

    env = {"JUPYTER_DATA_DIR": str(tmp_path / "data")}
    monkeypatch.delenv("JUPYTER_DS_AUDIT_LOG", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", env["JUPYTER_DATA_DIR"])
    first = default_log_path(server_id(tmp_path, 8888))
    second = default_log_path(server_id(tmp_path, 8889))
    assert first != second
    open_audit_log(first, environ={}).write(event(0, user="ann"))
    assert "ann" not in first.read_text()  # encrypted with the generated key

    proc = run_cli("report", "--json", env=env)  # the only log, and the key next to it
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"]["by_user"]["ann"]["requests"] == 1

    open_audit_log(second, environ={}).write(event(1, user="bob"))
    proc = run_cli("report", env=env)  # two servers' logs: name them, do not guess
    assert proc.returncode == 1
    assert first.name in proc.stderr and second.name in proc.stderr and "--log" in proc.stderr
    proc = run_cli("report", "--log", str(second), env=env)
    assert proc.returncode == 0 and "bob" in proc.stdout and str(second) in proc.stdout


def test_rotating_the_generated_key_as_the_readme_says(tmp_path: Path):
    from jupyter_ds.audit import find_keyring

    path = tmp_path / "audit-abc.log"
    first = open_audit_log(path, environ={})
    first.write(event(1, user="ann"))
    key = tmp_path / "audit.key"
    old_kid = first.keyring.current.kid
    new = new_key()  # `jupyter-ds audit keygen`, then put it first in the file
    key.write_text(key_text(new) + "\n" + key.read_text())
    second = open_audit_log(path, environ={})  # the restart
    assert second.keyring.current.kid == new.kid and old_kid in second.keyring.kids
    second.write(event(2, user="bob"))
    assert [json.loads(line)["kid"] for line in lines(path)] == [old_kid, new.kid]
    r = build_report(path, find_keyring(path, environ={}))
    assert set(r["by_user"]) == {"ann", "bob"} and r["lines"]["encrypted"] == 2
    key.write_text(key_text(new) + "\n")  # the old key removed too early
    with pytest.raises(AuditKeyMissingError, match=old_kid):
        build_report(path, find_keyring(path, environ={}))
