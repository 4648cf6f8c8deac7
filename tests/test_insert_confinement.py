"""``tests/insert`` writes only test files, under the root, outside hidden and excluded paths.

Each attack of issue 15 (finding 3) is replayed against a real Jupyter server: a
``test_path`` that names an IPython startup file, a Jupyter config file, a git hook, a file
under ``.ssh``, or an ordinary source file; a ``tests/test_x.py`` that is a symlink to one
of those; a source ``path`` behind a symlink out of the root. Each must be a 403 that names
the field, and leave every file (inside the root and out) as it was. Well-behaved inserts
keep working.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from jupyter_ds.git.runner import DEFAULT_EXCLUDE

SOURCE = "def double(x):\n    return 2 * x\n"
EVIL_TEST = "def test_x():\n    import os\n    os.system('id')\n"
GOOD_TEST = "def test_double():\n    assert double(3) == 6\n"
ORIGINAL_TEST_FILE = "from calc import double\n\n\ndef test_one():\n    assert double(1) == 2\n"


@pytest.fixture
def ds_config() -> dict[str, Any]:
    # An extra exclusion, so that a path that is neither hidden nor a default exclusion
    # can show that git_exclude is honoured.
    return {"git_exclude": [*DEFAULT_EXCLUDE, "secrets"]}


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture):
    """A refused path is the client's problem: the server never logs an error for it."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in errors]


@pytest.fixture
def outside(tmp_path: Path, jp_root_dir: Path) -> Path:
    """A folder outside the server root, reached from it through ``outlink``."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.py").write_text("SECRET = 1\n")
    (out / "test_z.py").write_text(ORIGINAL_TEST_FILE)
    os.symlink(out, jp_root_dir / "outlink", target_is_directory=True)
    return out


@pytest.fixture
def tree(jp_root_dir: Path, outside: Path) -> Path:
    """The files of the attacks: a repo with a hook folder, hidden config folders, links."""
    root = jp_root_dir
    for folder in ("repo/.git/hooks", ".ssh", ".jupyter", ".ipython/profile_default/startup",
                   "tests", "hidden_target/.private", "secrets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "repo" / "a.py").write_text(SOURCE)
    (root / "a.py").write_text(SOURCE)
    (root / ".ssh" / "x").write_text("ssh-ed25519 AAAA key\n")
    (root / ".ssh" / "test_k.py").write_text(ORIGINAL_TEST_FILE)
    (root / ".jupyter" / "jupyter_server_config.py").write_text("c = get_config()\n")
    # tests/test_*.py that are links to a hidden file, a source file and a file outside
    os.symlink(root / ".ssh" / "x", root / "tests" / "test_ssh.py")
    os.symlink(root / ".ssh" / "test_k.py", root / "tests" / "test_hidden_k.py")
    os.symlink(root / "repo" / "a.py", root / "tests" / "test_src.py")
    os.symlink(outside / "test_z.py", root / "tests" / "test_out.py")
    # a folder link that leads into a hidden folder: the parts of the real path count
    os.symlink(root / ".ssh", root / "tests" / "keys", target_is_directory=True)
    return root


def snapshot(*folders: Path) -> dict[str, bytes | str]:
    """Every file, folder and link under ``folders``: what a refused insert must not touch."""
    seen: dict[str, bytes | str] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                if path.is_symlink():
                    seen[str(path)] = "link -> " + os.readlink(path)
                elif path.is_dir():
                    seen[str(path)] = "dir"
                else:
                    seen[str(path)] = path.read_bytes()
    return seen


def insert_body(path: str, test_path: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"path": path, "tests": [EVIL_TEST], "imports": ["import os"]}
    if test_path is not None:
        body["test_path"] = test_path
    return {**body, **extra}


# (test_path, why it is refused): each one sent with path "repo/a.py".
REFUSED_TEST_PATHS = [
    (".ipython/profile_default/startup/00_evil.py", "IPython startup file"),
    (".ipython/profile_default/startup/test_evil.py", "startup folder, test name"),
    (".jupyter/jupyter_server_config.py", "Jupyter config"),
    (".jupyter/test_config.py", "Jupyter config folder, test name"),
    ("repo/.git/hooks/evil.py", "git hook folder"),
    ("repo/.git/hooks/test_evil.py", "git hook folder, test name"),
    (".ssh/evil.py", "ssh folder"),
    (".ssh/test_k.py", "an existing test file in a hidden folder"),
    ("repo/a.py", "an ordinary source file"),
    ("a.py", "an ordinary source file at the root"),
    ("repo/new_module.py", "a new file that is not a test file"),
    ("repo/test_a.txt", "not a .py file"),
    ("tests/test_ssh.py", "a test name linked to a hidden non-test file"),
    ("tests/test_hidden_k.py", "a test name linked to a test file in a hidden folder"),
    ("tests/test_src.py", "a test name linked to a source file"),
    ("tests/test_out.py", "a test name linked out of the root"),
    ("tests/keys/test_new.py", "a folder link into a hidden folder"),
    ("outlink/test_new.py", "a folder link out of the root"),
    (".hidden/test_x.py", "a hidden folder"),
    ("repo/.test_x.py", "a hidden file"),
    ("secrets/test_x.py", "a folder matched by git_exclude"),
    ("repo/secrets/test_x.py", "a folder matched by git_exclude, deeper"),
]


@pytest.mark.parametrize("test_path", [case for case, _ in REFUSED_TEST_PATHS],
                         ids=[why for _, why in REFUSED_TEST_PATHS])
async def test_test_paths_that_are_not_plain_test_files_are_refused(
    ds_client, tree: Path, outside: Path, test_path: str
):
    before = snapshot(tree, outside)
    code, env, _ = await ds_client.post("tests/insert", insert_body("repo/a.py", test_path))
    assert code == 403, env
    assert env["status"] == "error", env
    assert env["error"]["code"] == "forbidden" and env["error"]["field"] == "test_path", env
    assert "Traceback" not in str(env) and str(outside) not in str(env)
    assert snapshot(tree, outside) == before  # nothing written, created or changed
    code, _, _ = await ds_client.get("health")
    assert code == 200  # the server is still up


@pytest.mark.parametrize("path", ["outlink/secret.py", "outlink/new.py"])
async def test_a_source_path_behind_a_symlink_out_of_the_root_is_refused(
    ds_client, tree: Path, outside: Path, path: str
):
    before = snapshot(tree, outside)
    for body in (insert_body(path), insert_body(path, "tests/test_secret.py")):
        code, env, _ = await ds_client.post("tests/insert", body)
        assert code == 403, env
        assert env["error"]["code"] == "forbidden" and env["error"]["field"] == "path", env
        assert str(outside) not in str(env)
    assert snapshot(tree, outside) == before


async def test_a_derived_test_file_in_a_hidden_folder_is_refused(ds_client, tree: Path):
    """Without ``test_path`` the file is found next to the source: the same rule holds,
    and the error names ``path``, the field that led there."""
    startup = tree / ".ipython" / "profile_default" / "startup"
    (startup / "test_boot.py").write_text(ORIGINAL_TEST_FILE)
    before = snapshot(tree)
    code, env, _ = await ds_client.post(
        "tests/insert", insert_body(".ipython/profile_default/startup/boot.py"))
    assert code == 403, env
    assert env["error"]["code"] == "forbidden" and env["error"]["field"] == "path", env
    assert snapshot(tree) == before


async def test_hidden_folders_follow_the_contents_managers_allow_hidden(
    ds_client, jp_serverapp, tree: Path
):
    """With ``ContentsManager.allow_hidden`` Jupyter writes hidden files itself, so a test
    file there is allowed; git_exclude (``.ssh``) and the name rule still hold."""
    jp_serverapp.contents_manager.allow_hidden = True
    try:
        body = {"path": "repo/a.py", "tests": [GOOD_TEST], "test_path": ".hidden/test_x.py"}
        code, env, _ = await ds_client.post("tests/insert", body)
        assert code == 200, env
        assert (tree / ".hidden" / "test_x.py").read_text().startswith("def test_double")
        before = snapshot(tree)
        for test_path in (".ssh/test_new.py", ".ipython/profile_default/startup/00_evil.py",
                          "tests/test_ssh.py"):
            code, env, _ = await ds_client.post("tests/insert",
                                                insert_body("repo/a.py", test_path))
            assert code == 403 and env["error"]["field"] == "test_path", (test_path, env)
        assert snapshot(tree) == before
    finally:
        jp_serverapp.contents_manager.allow_hidden = False


async def test_plain_test_files_are_still_written(ds_client, jp_root_dir: Path):
    root = jp_root_dir
    (root / "pkg").mkdir()
    (root / "pkg" / "calc.py").write_text(SOURCE)
    (root / "tests").mkdir()
    (root / "tests" / "test_a.py").write_text(ORIGINAL_TEST_FILE)
    (root / "tests" / "test_link.py").symlink_to(root / "tests" / "test_a.py")
    body = {"path": "pkg/calc.py", "tests": [GOOD_TEST], "imports": ["from calc import double"]}
    cases = [
        ("tests/test_a.py", False),  # an existing test file
        ("pkg/calc_test.py", True),  # the *_test.py style, new
        ("pkg/test_calc.py", True),  # a new test file next to the source
        ("tests/test_link.py", False),  # a link to another test file under the root
    ]
    for test_path, created in cases:
        code, env, _ = await ds_client.post("tests/insert", {**body, "test_path": test_path})
        assert code == 200, (test_path, env)
        assert env["data"] == {"test_path": test_path, "created": created, "added": 1}
    text = (root / "tests" / "test_a.py").read_text()
    assert text.startswith(ORIGINAL_TEST_FILE.rstrip("\n")) and text.count("def test_double") == 2
    assert (root / "tests" / "test_link.py").is_symlink()
    assert "def test_double" in (root / "pkg" / "calc_test.py").read_text()
    assert "def test_double" in (root / "pkg" / "test_calc.py").read_text()
    # and without test_path: the matching file next to the source, found and appended to
    code, env, _ = await ds_client.post("tests/insert", body)
    assert code == 200, env
    assert env["data"] == {"test_path": "pkg/test_calc.py", "created": False, "added": 1}
