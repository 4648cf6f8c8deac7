"""The one path-confinement helper (``jupyter_ds.paths``) and the test-file rule built on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_ds.errors import ApiError
from jupyter_ds.git.runner import DEFAULT_EXCLUDE, Runner
from jupyter_ds.paths import excluded_by, hidden_part, locate, resolve_under_root
from jupyter_ds.testgen.insert import (
    check_test_file,
    find_test_file,
    insertion_target,
    is_test_file_name,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A server root with a hidden folder, a source file and links in and out of it."""
    base = tmp_path / "root"
    (base / "pkg").mkdir(parents=True)
    (base / ".ssh").mkdir()
    (base / "tests").mkdir()
    (base / "pkg" / "mod.py").write_text("x = 1\n")
    (base / ".ssh" / "id").write_text("key\n")
    (base / "tests" / "test_mod.py").write_text("def test_a():\n    pass\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "test_out.py").write_text("")
    os.symlink(outside, base / "outlink", target_is_directory=True)
    os.symlink(base / ".ssh", base / "keys", target_is_directory=True)
    os.symlink(base / ".ssh" / "id", base / "tests" / "test_id.py")
    os.symlink(base / "pkg" / "mod.py", base / "tests" / "test_src.py")
    os.symlink(base / "tests" / "test_mod.py", base / "tests" / "test_alias.py")
    return base


def error_of(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value


# -- locate and resolve_under_root ----------------------------------------------------------


def test_locate_normalises_and_resolves(root: Path) -> None:
    real_root = Path(os.path.realpath(root))
    where = locate(root, "pkg/../pkg/./mod.py")
    assert (where.root, where.normal, where.real) == (real_root, "pkg/mod.py",
                                                       real_root / "pkg" / "mod.py")
    assert where.inside and where.real_relative == "pkg/mod.py"
    linked = locate(root, "keys/id")
    assert linked.normal == "keys/id" and linked.real_relative == ".ssh/id"
    assert locate(root, "").real == real_root and locate(root, "").real_relative == "."


def test_locate_reports_a_symlink_out_of_the_root_without_refusing(root: Path) -> None:
    assert not locate(root, "outlink/test_out.py").inside
    assert not locate(root, "outlink").inside


@pytest.mark.parametrize("path", ["../x.py", "/etc/passwd", "a/../../x.py", "C:\\x.py"])
@pytest.mark.parametrize("status", [400, 403])
def test_strings_that_leave_the_root_are_refused_with_the_given_status(
    root: Path, path: str, status: int
) -> None:
    for call in (locate, resolve_under_root):
        error = error_of(call, root, path, "where", status=status)
        assert (error.status, error.field) == (status, "where")


@pytest.mark.parametrize("path", ["a\x00b", "x/" + "y" * 300])
def test_malformed_strings_are_a_400_whatever_the_status(root: Path, path: str) -> None:
    error = error_of(locate, root, path, "where", status=403)
    assert (error.status, error.code, error.field) == (400, "invalid_request", "where")


def test_resolve_under_root_refuses_a_symlink_out_with_a_403(root: Path) -> None:
    for status in (400, 403):
        error = error_of(resolve_under_root, root, "outlink/secret.py", "path", status=status)
        assert (error.status, error.code, error.field) == (403, "forbidden", "path")
    assert resolve_under_root(root, "keys/id") == Path(os.path.realpath(root / ".ssh" / "id"))


# -- hidden and excluded --------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative, hidden",
    [("a/b.py", None), (".", None), (".ssh/x", ".ssh"), ("repo/.git/hooks/x", ".git"),
     ("a/.test_x.py", ".test_x.py"), ("a.b/c..d/x.py", None)],
)
def test_hidden_part(relative: str, hidden: str | None) -> None:
    assert hidden_part(relative) == hidden


def test_excluded_by_matches_components_and_whole_paths() -> None:
    assert excluded_by(".ssh/test_x.py", DEFAULT_EXCLUDE) == ".ssh"
    assert excluded_by("keys/server.pem", DEFAULT_EXCLUDE) == "*.pem"
    assert excluded_by("tests/test_x.py", DEFAULT_EXCLUDE) is None
    assert excluded_by("data/raw/test_x.py", ["data/raw/*"]) == "data/raw/*"
    assert excluded_by("other/data/raw/test_x.py", ["data/raw/*"]) is None
    # git's own check is the same function
    runner = Runner(".", exclude=["secrets", "data/raw/*"])
    assert runner.excluded("a/secrets/b") == "secrets"
    assert runner.excluded("data/raw/x") == "data/raw/*"


# -- the test-file rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ok",
    [("test_a.py", True), ("a_test.py", True), ("test_.py", True), ("a.py", False),
     ("conftest.py", False), ("test_a.pyc", False), ("Test_a.py", False),
     ("00_evil.py", False), ("jupyter_server_config.py", False), ("test_a.txt", False)],
)
def test_is_test_file_name(name: str, ok: bool) -> None:
    assert is_test_file_name(name) is ok


@pytest.mark.parametrize(
    "test_path, fragment",
    [
        ("pkg/mod.py", "not a test file"),
        (".ipython/profile_default/startup/00_evil.py", "not a test file"),
        (".ipython/profile_default/startup/test_evil.py", "hidden"),
        ("repo/.git/hooks/test_x.py", "hidden"),
        (".ssh/test_x.py", "hidden"),
        ("keys/test_x.py", "a link to '.ssh/test_x.py'"),
        ("tests/test_id.py", "a link to '.ssh/id'"),
        ("tests/test_src.py", "a link to 'pkg/mod.py'"),
        ("outlink/test_out.py", "outside the server root"),
        ("secrets/test_x.py", "git_exclude"),
    ],
)
def test_check_test_file_refuses(root: Path, test_path: str, fragment: str) -> None:
    error = error_of(check_test_file, root, test_path, exclude=["secrets"])
    assert (error.status, error.code, error.field) == (403, "forbidden", "test_path")
    assert fragment in error.message
    assert str(root.parent / "outside") not in error.message


def test_check_test_file_accepts_test_files_and_links_to_them(root: Path) -> None:
    real_root = Path(os.path.realpath(root))
    assert check_test_file(root, "tests/test_mod.py") == real_root / "tests" / "test_mod.py"
    assert check_test_file(root, "tests/test_alias.py") == real_root / "tests" / "test_mod.py"
    assert check_test_file(root, "pkg/mod_test.py") == real_root / "pkg" / "mod_test.py"
    assert check_test_file(root, "new/dir/test_x.py") == real_root / "new" / "dir" / "test_x.py"


def test_allow_hidden_lifts_only_the_hidden_rule(root: Path) -> None:
    assert check_test_file(root, ".hidden/test_x.py", allow_hidden=True).name == "test_x.py"
    assert error_of(check_test_file, root, ".ssh/test_x.py", allow_hidden=True,
                    exclude=DEFAULT_EXCLUDE).status == 403
    assert error_of(check_test_file, root, ".ipython/x.py", allow_hidden=True).status == 403


@pytest.mark.parametrize("test_path", ["", "../test_x.py", "/tmp/test_x.py", "a\x00/test_x.py"])
def test_check_test_file_keeps_400_for_malformed_strings(root: Path, test_path: str) -> None:
    error = error_of(check_test_file, root, test_path)
    assert (error.status, error.field) == (400, "test_path")


def test_insertion_target(root: Path) -> None:
    assert insertion_target(root, "pkg/mod.py") == "tests/test_mod.py"  # found
    assert insertion_target(root, "pkg/other.py") == "tests/test_other.py"  # the default
    assert insertion_target(root, "pkg/mod.py", "pkg/test_mod.py") == "pkg/test_mod.py"
    error = error_of(insertion_target, root, "outlink/secret.py", "tests/test_x.py")
    assert (error.status, error.field) == (403, "path")
    error = error_of(insertion_target, root, "../mod.py")
    assert (error.status, error.field) == (400, "path")
    error = error_of(insertion_target, root, "pkg/mod.py", "pkg/mod.py")
    assert (error.status, error.field) == (403, "test_path")
    (root / ".ssh" / "test_id.py").write_text("")  # found next to a hidden source: refused
    error = error_of(insertion_target, root, ".ssh/id.py")
    assert (error.status, error.field) == (403, "path")


def test_find_test_file_passes_over_links_out_of_the_root(root: Path) -> None:
    os.symlink(root.parent / "outside" / "test_out.py", root / "pkg" / "test_out.py")
    (root / "tests" / "test_out.py").write_text("")
    assert find_test_file("pkg/out.py", root) == "tests/test_out.py"
    # candidates above the root are passed over too, without an error
    assert find_test_file("../pkg/out.py", root) == "tests/test_out.py"
