"""Adapters and the fine-tuning job through a real Jupyter server (tiny models).

Load, use, switch and unload adapters without a restart; folder defaults; every bad
input (unknown, corrupt, incompatible, outside the root); then a fine-tuning job that
trains on a folder under the root, reports progress and attaches its adapter.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
from ds_engine.testing import make_tiny_adapter, make_tiny_model

SUFFIX = "\n\nprint(add(1, 2))\n"
BODY = {"prefix": "def add(a, b):\n    return", "suffix": SUFFIX, "max_tokens": 8}


@pytest.fixture(scope="module")
def fim_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with SmolLM2's marker tokens in its vocabulary."""
    return make_tiny_model(tmp_path_factory.mktemp("fim") / "tiny", "jupyter-ds-spm")


@pytest.fixture
def adapters_dir(tmp_path: Path) -> Path:
    return tmp_path / "adapters"


@pytest.fixture
def ds_config(fim_model_dir: Path, adapters_dir: Path) -> dict:
    return {"model_path": str(fim_model_dir), "adapters_dir": str(adapters_dir),
            "folder_adapters": {"team": "a"}, "finetune_threads": 1}


@pytest.fixture
def jp_server_config(fim_model_dir: Path, ds_config: dict) -> dict:
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
        },
        "JupyterDsApp": ds_config,
    }


@pytest.fixture
def adapter_folders(jp_root_dir: Path, fim_model_dir: Path) -> dict[str, Path]:
    return {
        "a": make_tiny_adapter(fim_model_dir, jp_root_dir / "adapters" / "a", seed=1,
                               base_model="tiny"),
        "b": make_tiny_adapter(fim_model_dir, jp_root_dir / "adapters" / "b", seed=2,
                               base_model="tiny", fim_family=None),
    }


async def test_load_use_switch_unload(ds_ready, adapter_folders) -> None:
    client = ds_ready
    code, env, _ = await client.get("adapters")
    assert code == 200 and env["data"]["adapters"] == []
    assert env["data"]["folder_defaults"] == {"team": "a"}
    code, plain, _ = await client.post("complete", BODY)
    assert code == 200 and plain["data"]["adapter"] is None

    for name in ("a", "b"):
        code, env, _ = await client.post(f"adapters/{name}", {"path": f"adapters/{name}"})
        assert code == 200, env
        assert env["data"]["adapter"]["name"] == name and env["data"]["adapter"]["load_s"] < 5
    code, env, _ = await client.get("adapters")
    listed = {a["name"]: a for a in env["data"]["adapters"]}
    assert set(listed) == {"a", "b"} and listed["a"]["fim_format"] == "jupyter-ds-spm"
    assert listed["b"]["fim_format"] is None

    code, with_a, _ = await client.post("complete", {**BODY, "adapter": "a"})
    assert code == 200 and with_a["data"]["adapter"] == "a"
    # Adapter a's FIM format puts the suffix in the prompt: more prompt tokens.
    assert with_a["data"]["prompt_tokens"] > plain["data"]["prompt_tokens"]
    code, with_b, _ = await client.post("complete", {**BODY, "adapter": "b"})
    assert code == 200 and with_b["data"]["prompt_tokens"] == plain["data"]["prompt_tokens"]
    # Its weights answer, not the base's: the generated tokens' probabilities differ.
    assert with_b["data"]["confidence"] != plain["data"]["confidence"]

    # A file in the folder "team" completes with adapter a by default.
    code, team, _ = await client.post("complete", {**BODY, "path": "team/x.py"})
    assert team["data"]["adapter"] == "a"
    code, other, _ = await client.post("complete", {**BODY, "path": "teams/x.py"})
    assert other["data"]["adapter"] is None

    code, env, _ = await client.call("DELETE", "adapters/a")
    assert code == 200 and env["data"]["state"] == "unloaded"
    code, env, _ = await client.post("complete", {**BODY, "adapter": "a"})
    assert code == 404 and env["error"]["code"] == "unknown_adapter"
    assert "'a'" in env["error"]["message"] and env["error"]["field"] == "adapter"
    code, env, _ = await client.call("DELETE", "adapters/a")
    assert code == 404
    code, again, _ = await client.post("complete", {**BODY, "adapter": "b"})
    assert again["data"]["confidence"] == with_b["data"]["confidence"]


async def test_bad_adapters_are_refused_and_the_server_stays_up(
    ds_ready, adapter_folders, jp_root_dir: Path, tmp_path: Path
) -> None:
    client = ds_ready
    code, env, _ = await client.post("complete", {**BODY, "adapter": "../etc"})
    assert code == 400 and env["error"]["field"] == "adapter"
    code, env, _ = await client.post("complete", {**BODY, "adapter": "ghost"})
    assert code == 404 and "'ghost'" in env["error"]["message"]

    corrupt = jp_root_dir / "adapters" / "corrupt"
    shutil.copytree(adapter_folders["a"], corrupt)
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    code, env, _ = await client.post("adapters/corrupt", {"path": "adapters/corrupt"})
    assert code == 422 and "corrupt" in env["error"]["message"]

    other = make_tiny_model(tmp_path / "narrow", "jupyter-ds-spm", hidden_size=32)
    make_tiny_adapter(other, jp_root_dir / "adapters" / "narrow", base_model="tiny")
    code, env, _ = await client.post("adapters/narrow", {"path": "adapters/narrow"})
    assert code == 422 and "incompatible" in env["error"]["message"]

    code, env, _ = await client.post("adapters/x", {"path": "../outside"})
    assert code == 403 and env["error"]["field"] == "path"
    (jp_root_dir / "out-link").symlink_to(tmp_path)
    code, env, _ = await client.post("adapters/x", {"path": "out-link"})
    assert code == 403
    code, env, _ = await client.post("adapters/x", {"path": "nowhere"})
    assert code == 404
    code, env, _ = await client.post("adapters/x", {"path": 3})
    assert code == 400 and env["error"]["field"] == "path"

    code, env, _ = await client.post("complete", BODY)
    assert code == 200
    code, env, _ = await client.get("adapters")
    assert env["data"]["adapters"] == []


# -- the fine-tuning job ------------------------------------------------------------------

SOURCE = "def clamp(x, lo, hi):\n    if x > hi:\n        return hi\n    return x\n"


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    for i in range(8):
        path = repo / "pkg" / f"m{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SOURCE.replace("clamp", f"clamp_{i}") * 3)
    return repo


async def wait_job(client, states=("done", "failed", "cancelled"), timeout=180.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        code, env, _ = await client.get("finetune")
        assert code == 200, env
        job = env["data"]["job"]
        if job["state"] in states or loop.time() > deadline:
            return job
        await asyncio.sleep(0.2)


async def test_finetune_job_trains_and_attaches(ds_ready, jp_root_dir: Path,
                                                adapters_dir: Path) -> None:
    client = ds_ready
    make_repo(jp_root_dir)
    code, env, _ = await client.get("finetune")
    assert code == 404
    code, env, _ = await client.post("finetune", {"path": "repo", "name": "mine",
                                                  "max_tokens": 4000})
    assert code == 202, env
    assert env["data"]["job"]["state"] == "running"
    assert env["data"]["job"]["files"]["train"] >= 6
    code, env, _ = await client.post("finetune", {"path": "repo", "name": "other",
                                                  "max_tokens": 4000})
    assert code == 409 and "running" in env["error"]["message"]
    job = await wait_job(client)
    assert job["state"] == "done" and job["loaded"], job
    assert job["progress"]["phase"] == "done" and job["progress"]["tokens"] >= 4000
    assert (adapters_dir / "mine" / "adapter_model.safetensors").is_file()
    code, env, _ = await client.get("adapters")
    assert [a["name"] for a in env["data"]["adapters"]] == ["mine"]
    code, env, _ = await client.post("complete", {**BODY, "adapter": "mine"})
    assert code == 200 and env["data"]["adapter"] == "mine"
    # The same name again needs resume.
    code, env, _ = await client.post("finetune", {"path": "repo", "name": "mine",
                                                  "max_tokens": 4000})
    assert code == 409 and env["error"]["field"] == "name"


async def test_finetune_job_cancel_keeps_a_checkpoint(ds_ready, jp_root_dir: Path,
                                                      adapters_dir: Path) -> None:
    client = ds_ready
    make_repo(jp_root_dir)
    code, env, _ = await client.post("finetune", {"path": "repo", "name": "long",
                                                  "max_minutes": 30})
    assert code == 202, env
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while loop.time() < deadline:
        _, env, _ = await client.get("finetune")
        progress = env["data"]["job"]["progress"] or {}
        if progress.get("step", 0) >= 2:
            break
        await asyncio.sleep(0.2)
    # Completion keeps working while the job trains.
    code, _, _ = await client.post("complete", BODY)
    assert code == 200
    code, env, _ = await client.call("DELETE", "finetune")
    assert code == 200 and env["data"]["job"]["state"] == "cancelled"
    state = json.loads((adapters_dir / "long" / "checkpoint" / "state.json").read_text())
    assert state["state"]["step"] >= 2
    code, env, _ = await client.call("DELETE", "finetune")
    assert code == 404


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ({"path": "empty", "name": "e", "max_tokens": 2000}, 400, "path", "no Python files"),
        ({"path": "bins", "name": "e", "max_tokens": 2000}, 400, "path", "binary"),
        ({"path": "missing", "name": "e", "max_tokens": 2000}, 404, "path", "no such folder"),
        ({"path": "../up", "name": "e", "max_tokens": 2000}, 403, "path", "leaves"),
        ({"path": "bins", "name": "e"}, 400, "max_minutes", "budget"),
        ({"path": "bins", "name": "a/b", "max_tokens": 2000}, 400, "name", "must match"),
        ({"path": "bins", "name": "e", "max_tokens": 2000, "rank": 0}, 400, "rank", "between"),
    ],
    ids=["empty", "binaries", "missing", "outside-root", "no-budget", "bad-name", "bad-rank"],
)
async def test_finetune_bad_input(ds_ready, jp_root_dir: Path, body, status, field,
                                  message) -> None:
    (jp_root_dir / "empty").mkdir()
    (jp_root_dir / "bins").mkdir()
    (jp_root_dir / "bins" / "x.py").write_bytes(b"\x00\x01")
    (jp_root_dir / "bins" / "y.bin").write_bytes(os.urandom(64))
    code, env, _ = await ds_ready.post("finetune", body)
    assert code == status, env
    assert env["error"]["field"] == field and message in env["error"]["message"]
    code, env, _ = await ds_ready.get("health")
    assert code == 200
