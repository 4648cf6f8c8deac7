"""Paths from requests, confined to the server root.

Every path a client sends is relative to the folder the Jupyter server serves. These
helpers refuse absolute paths and ``..`` climbs before touching the disk, then resolve
symlinks and check that the real path is still under the (real) root, so that neither a
crafted string nor a symlink reaches a file the server does not serve.
"""

from __future__ import annotations

import os
import posixpath
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


def resolve_under_root(
    root_dir: str | os.PathLike[str], path: str, field: str = "path", *, allow_root: bool = True
) -> Path:
    """The real path of ``path`` under ``root_dir``; 403 naming ``field`` if it leaves it.

    Unlike Jupyter's contents API, symlinks that lead outside the root are refused here:
    the callers (git) act on what the link points to.
    """
    normal = normalise_relative(path, field, allow_root=allow_root, status=403)
    root = Path(os.path.realpath(root_dir))
    real = Path(os.path.realpath(root / normal))
    if not is_within(root, real):
        raise forbidden(f"field '{field}' resolves outside the server root (a symlink?)", field)
    return real
