"""``tests``, ``tests/run`` and ``tests/insert`` on a real Jupyter server (tiny model)."""

from __future__ import annotations

import json

import pytest

SOURCE = "def double(x):\n    if x is None:\n        return 0\n    return 2 * x\n"
TESTS = (
    "from calc import double\n\n\ndef test_double():\n    assert double(2) == 4\n\n\n"
    "def test_wrong():\n    assert double(2) == 5\n"
)


async def test_run_reports_each_test_with_the_sandbox_verdict(ds_ready):
    code, env, _ = await ds_ready.post(
        "tests/run", {"tests": TESTS, "source": SOURCE, "path": "calc.py", "runs": 2}
    )
    assert code == 200, env
    data = env["data"]
    results = {t["name"]: t for t in data["tests"]}
    assert results["test_double"]["outcome"] == "passed"
    assert results["test_double"]["passed_runs"] == 2
    assert results["test_wrong"]["outcome"] == "failed"
    assert "assert 4 == 5" in results["test_wrong"]["message"]
    assert data["sandbox"]["mode"] in ("bwrap", "limits-only")
    assert data["sandbox"]["reason"]
    assert 0 < data["coverage"]["lines"] < 100


async def test_run_reads_the_source_from_under_the_root(ds_ready, jp_root_dir):
    (jp_root_dir / "calc.py").write_text(SOURCE)
    code, env, _ = await ds_ready.post("tests/run", {"tests": TESTS, "path": "calc.py"})
    assert code == 200, env
    assert {t["name"] for t in env["data"]["tests"]} == {"test_double", "test_wrong"}


async def test_generate_gives_every_candidate_a_verdict(ds_ready):
    code, env, _ = await ds_ready.post(
        "tests", {"source": SOURCE, "path": "calc.py", "rounds": 1, "max_tokens": 48}
    )
    assert code == 200, env
    data = env["data"]
    assert data["function"] == "double" and data["module"] == "calc"
    funnel = data["funnel"]
    assert funnel["candidates"] == len(data["verdicts"])
    assert funnel["candidates"] >= funnel["parse"] >= funnel["pass"] >= funnel["kept"]
    for verdict in data["verdicts"]:
        assert verdict["status"] in ("kept", "rejected") and verdict["reason"]
    assert data["coverage"]["before"]["lines"] == 0.0


async def test_generate_streams_ndjson_progress(ds_ready):
    response = await ds_ready.fetch(
        "jupyter-ds", "v1", "tests", method="POST",
        body=json.dumps({"source": SOURCE, "rounds": 1, "max_tokens": 32, "stream": True}),
    )
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in response.body.decode().splitlines() if x]
    assert lines[0]["type"] == "start" and lines[0]["function"] == "double"
    assert lines[1]["type"] == "round"
    assert lines[-1]["status"] == "success" and "funnel" in lines[-1]["data"]


async def test_insert_writes_the_matching_test_file(ds_ready, jp_root_dir):
    (jp_root_dir / "pkg").mkdir()
    (jp_root_dir / "pkg" / "calc.py").write_text(SOURCE)
    body = {
        "path": "pkg/calc.py",
        "tests": ["def test_double():\n    assert double(3) == 6\n"],
        "imports": ["from calc import double"],
    }
    code, env, _ = await ds_ready.post("tests/insert", body)
    assert code == 200, env
    assert env["data"] == {"test_path": "tests/test_calc.py", "created": True, "added": 1}
    written = (jp_root_dir / "tests" / "test_calc.py").read_text()
    assert "from calc import double" in written and "def test_double" in written
    # a second insert appends and keeps the file's text
    body["tests"] = ["def test_double_zero():\n    assert double(0) == 0\n"]
    code, env, _ = await ds_ready.post("tests/insert", body)
    assert env["data"]["created"] is False
    again = (jp_root_dir / "tests" / "test_calc.py").read_text()
    assert again.startswith(written.rstrip("\n")) and again.count("from calc import double") == 1


@pytest.mark.parametrize(
    "path, body, status, field",
    [
        ("tests", {}, 400, "source"),
        ("tests", {"source": "def f(:"}, 400, "source"),
        ("tests", {"source": SOURCE, "target": "triple"}, 404, "target"),
        ("tests", {"source": SOURCE, "rounds": 9}, 400, "rounds"),
        ("tests", {"path": "../outside.py"}, 400, "path"),
        ("tests", {"path": "missing.py"}, 404, "path"),
        ("tests/run", {"source": SOURCE}, 400, "tests"),
        ("tests/run", {"tests": TESTS, "source": SOURCE, "module": "not a name"}, 400, "module"),
        ("tests/insert", {"path": "../x.py", "tests": ["def test_a(): pass"]}, 400, "path"),
        ("tests/insert", {"path": "a.py", "tests": "def test_a(): pass"}, 400, "tests"),
        ("tests/insert", {"path": "a.py", "tests": ["def broken(:"]}, 400, "tests"),
        ("tests/insert", {"path": "a.py", "tests": ["x"], "test_path": "/etc/x.py"}, 400,
         "test_path"),
    ],
    ids=lambda v: str(v)[:30],
)
async def test_bad_requests_name_the_field(ds_ready, path, body, status, field):
    code, env, _ = await ds_ready.post(path, body)
    assert code == status, env
    assert env["status"] == "error" and env["error"]["field"] == field, env


async def test_health_says_how_tests_are_sandboxed(ds_ready):
    code, env, _ = await ds_ready.get("health")
    assert code == 200, env
    sandbox = env["data"]["sandbox"]
    assert sandbox["mode"] in ("bwrap", "limits-only") and sandbox["reason"]
    if sandbox["mode"] == "limits-only":
        assert sandbox["network_isolated"] is False
