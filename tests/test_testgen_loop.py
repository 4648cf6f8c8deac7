"""The whole test-generation loop, with a scripted model and the real sandbox.

The model's answers are fixed (good, wrong, flaky, redundant and side-effecting tests);
everything else is real: candidate parsing, the sandboxed pytest runs, the 5-run
flakiness check, the coverage gate and the feedback of failures into the next round.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ds_engine.testing import ScriptedEngine

from jupyter_ds.errors import ApiError
from jupyter_ds.testgen.requests import TestsRequest, TestsRunRequest
from jupyter_ds.testgen.service import TestgenService, TestgenSettings

SOURCE = '''\
def mean(xs):
    """The arithmetic mean of a non-empty sequence."""
    if not xs:
        raise ValueError("mean of an empty sequence")
    return sum(xs) / len(xs)
'''

SEEDS = (0, 1, 2, 3, 4)


def _hash_bit(key: str, seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    out = subprocess.run([sys.executable, "-c", f"print(hash({key!r}) % 2)"], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def flaky_key() -> tuple[str, str]:
    """A key whose hash parity under seed 0 differs under some later seed."""
    for i in range(50):
        key = f"k{i}"
        bits = [_hash_bit(key, s) for s in SEEDS]
        if len(set(bits)) > 1:
            return key, bits[0]
    raise AssertionError("no key with a seed-dependent hash parity")


def round_one() -> str:
    key, bit = flaky_key()
    # The service appends this to "def test_mean" (the prompt's last line).
    return f'''_basic():
    assert mean([1, 2, 3]) == 2


def test_mean_wrong():
    assert mean([1, 2]) == 2


def test_mean_same_lines_again():
    assert mean([4.0, 4.0]) == 4.0


def test_mean_hash_order():
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", "print(hash({key!r}) % 2)"],
                         capture_output=True, text=True).stdout
    assert out.strip() == "{bit}"


print("a side effect at import")


def test_mean_empty():
    with pytest.raises(ValueError):
        mean([])
'''


ROUND_TWO = '''_of_pair():
    assert mean([1, 2]) == 1.5


def test_mean_exits():
    import os
    os._exit(0)
'''


@pytest.fixture
def service():
    engine = ScriptedEngine([round_one(), ROUND_TWO])
    return TestgenService(engine, TestgenSettings(hash_seeds=SEEDS))


async def test_loop_keeps_only_tests_that_pass_reliably_and_add_coverage(service):
    events = [e async for e in service.events(TestsRequest(source=SOURCE, path="stats.py"))]
    done = events[-1]
    assert done["type"] == "done" and done["function"] == "mean"
    by_name = {v["name"]: v for v in done["verdicts"]}
    assert by_name["test_mean_basic"]["status"] == "kept"
    assert by_name["test_mean_basic"]["passed_runs"] == 5
    assert by_name["test_mean_empty"]["status"] == "kept"
    assert by_name["test_mean_empty"]["adds"]["lines"] >= 1
    assert by_name["test_mean_wrong"]["reason"] == "fails"
    assert "assert" in by_name["test_mean_wrong"]["message"]
    assert by_name["test_mean_same_lines_again"]["reason"] == "adds_no_coverage"
    assert by_name["test_mean_hash_order"]["reason"] == "flaky"
    assert 1 <= by_name["test_mean_hash_order"]["passed_runs"] < 5
    assert any(v["reason"] == "side_effect" for v in done["verdicts"])
    # round two: a correct but redundant test, and one that kills the runner
    assert by_name["test_mean_of_pair"]["reason"] == "adds_no_coverage"
    assert by_name["test_mean_exits"]["status"] == "rejected"
    assert by_name["test_mean_exits"]["reason"] in ("killed_by_sandbox", "error")
    assert [k["name"] for k in done["kept"]] == ["test_mean_basic", "test_mean_empty"]
    # the failure of round one was fed back into round two's prompt
    assert "test_mean_wrong was wrong" in service.engine.prompts[1]
    assert "def test_mean_basic" in service.engine.prompts[1]  # kept tests stay in the file
    # coverage: nothing before, every line after
    assert done["coverage"]["before"]["lines"] == 0.0
    assert done["coverage"]["after"]["lines"] == 100.0
    assert done["coverage"]["after"]["branches"] == 100.0
    funnel = done["funnel"]
    assert funnel["kept"] == 2 and funnel["candidates"] >= 8
    assert funnel["candidates"] >= funnel["parse"] >= funnel["pass"] >= funnel["stable"]
    assert funnel["stable"] >= funnel["adds_coverage"] == funnel["kept"]
    assert "def test_mean_basic" in done["test_file"] and "from stats import mean" in done[
        "test_file"]
    # progress: candidates are announced before their verdicts
    assert events[0]["type"] == "start"
    for name in ("test_mean_basic", "test_mean_wrong", "test_mean_exits"):
        order = [e["type"] for e in events if e.get("name") == name]
        assert order == ["candidate", "verdict"], (name, order)
    assert done["sandbox"]["mode"] in ("bwrap", "limits-only")


async def test_existing_tests_set_the_coverage_baseline():
    engine = ScriptedEngine(["_basic():\n    assert mean([2, 4]) == 3\n"])
    service = TestgenService(engine, TestgenSettings(hash_seeds=SEEDS))
    existing = "from stats import mean\n\n\ndef test_mean_existing():\n    assert mean([1]) == 1\n"
    done = await service.generate(
        TestsRequest(source=SOURCE, path="stats.py", existing_tests=existing, rounds=1)
    )
    assert done["coverage"]["before"]["lines"] > 0
    assert done["verdicts"][0]["reason"] == "adds_no_coverage"
    assert done["kept"] == []
    assert "def test_mean_existing" in engine.prompts[0]  # existing tests are in the prompt


async def test_run_endpoint_service_reports_per_test_results(service):
    tests = (
        "from stats import mean\n\n\ndef test_ok():\n    assert mean([2]) == 2\n\n\n"
        "def test_bad():\n    assert mean([2]) == 3\n"
    )
    data = await service.run_tests(TestsRunRequest(tests=tests, source=SOURCE, path="stats.py",
                                                   runs=2))
    outcomes = {t["name"]: (t["outcome"], t["passed_runs"]) for t in data["tests"]}
    assert outcomes == {"test_ok": ("passed", 2), "test_bad": ("failed", 0)}
    assert data["ok"] is True and data["coverage"]["lines"] > 0


@pytest.mark.parametrize(
    "request_, field",
    [
        (TestsRequest(), "source"),
        (TestsRequest(source="def f(:\n"), "source"),
        (TestsRequest(source=SOURCE, target="median"), "target"),
        (TestsRequest(source="x = 1\n"), "target"),
        (TestsRequest(path="stats.py"), "path"),
    ],
)
async def test_bad_requests_name_the_field(service, request_, field):
    with pytest.raises(ApiError) as info:
        await service.generate(request_)
    assert info.value.field == field


async def test_a_branch_that_leaves_the_function_counts_as_coverage():
    source = "def f(x):\n    if x:\n        print(1)\n"
    engine = ScriptedEngine(["_true():\n    f(1)\n\n\ndef test_f_false():\n    f(0)\n"])
    service = TestgenService(engine, TestgenSettings(hash_seeds=SEEDS))
    done = await service.generate(TestsRequest(source=source, path="m.py", rounds=1))
    by_name = {v["name"]: v for v in done["verdicts"]}
    assert by_name["test_f_true"]["status"] == "kept"
    # f(0) runs no new line, only the branch from the `if` out of the function.
    assert by_name["test_f_false"]["status"] == "kept", by_name["test_f_false"]
    assert by_name["test_f_false"]["adds"] == {"lines": 0, "branches": 1}
    assert done["coverage"]["after"]["branches"] == 100.0


def test_module_names_stay_file_names():
    """A module is written as "<name>.py" in the sandbox: never past a file name's 255 bytes."""
    from jupyter_ds.testgen.service import module_name

    name = module_name("pkg/" + "é" * 250 + ".py")
    assert name.isidentifier() and len((name + ".py").encode()) <= 255
    assert module_name("3d_tools.py") == "m_3d_tools"


def test_a_module_field_that_is_no_file_name_is_refused():
    from jupyter_ds.errors import ApiError
    from jupyter_ds.requests import parse_request
    from jupyter_ds.testgen.requests import TestsRunRequest

    for bad in ("a" * 298, "os.path", "1abc"):
        with pytest.raises(ApiError) as err:
            parse_request(TestsRunRequest, {"tests": "", "module": bad})
        assert err.value.status == 400 and err.value.field == "module"
