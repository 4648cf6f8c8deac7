"""Parsers of git's machine-readable output (porcelain v2, numstat, blame porcelain).

All of them read ``-z`` (NUL-separated) output where git offers it, so file names with
spaces, quotes, newlines or non-ASCII characters come through unquoted and intact.
"""

from __future__ import annotations

from typing import Any

LOG_FORMAT = "%H%x00%h%x00%an%x00%ae%x00%aI%x00%s%x1e"
SHOW_FORMAT = "%H%x00%h%x00%an%x00%ae%x00%aI%x00%P%x00%B"


def parse_status(out: str) -> dict[str, Any]:
    """``git status --porcelain=v2 --branch -z`` as the API's status object."""
    result: dict[str, Any] = {
        "branch": None, "detached": False, "head": None, "upstream": None,
        "ahead": 0, "behind": 0, "staged": [], "unstaged": [], "untracked": [],
        "conflicted": [],
    }
    fields = out.split("\0")
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if not entry:
            continue
        kind = entry[0]
        if kind == "#":
            _branch_header(entry, result)
        elif kind == "?":
            result["untracked"].append(entry[2:])
        elif kind == "u":
            result["conflicted"].append(entry.split(" ", 10)[10])
        elif kind in "12":
            parts = entry.split(" ", 9 if kind == "2" else 8)
            xy, path = parts[1], parts[-1]
            old = None
            if kind == "2":  # a rename or copy: the original path is the next field
                old = fields[i]
                i += 1
            for letter, key in ((xy[0], "staged"), (xy[1], "unstaged")):
                if letter != ".":
                    item: dict[str, Any] = {"path": path, "status": letter}
                    if old is not None and letter in "RC":
                        item["old_path"] = old
                    result[key].append(item)
    return result


def _branch_header(entry: str, result: dict[str, Any]) -> None:
    _, key, value = ([*entry.split(" ", 2), "", ""])[:3]
    if key == "branch.oid":
        result["head"] = None if value == "(initial)" else value
    elif key == "branch.head":
        result["detached"] = value == "(detached)"
        result["branch"] = None if result["detached"] else value
    elif key == "branch.upstream":
        result["upstream"] = value
    elif key == "branch.ab":
        ahead, behind = value.split()
        result["ahead"], result["behind"] = int(ahead), abs(int(behind))


def parse_name_status(out: str) -> dict[str, tuple[str, str | None]]:
    """``--name-status -z``: new path -> (status letter, old path for renames/copies)."""
    fields = out.split("\0")
    statuses: dict[str, tuple[str, str | None]] = {}
    i = 0
    while i < len(fields) and fields[i]:
        letter = fields[i][0]
        if letter in "RC":
            statuses[fields[i + 2]] = (letter, fields[i + 1])
            i += 3
        else:
            statuses[fields[i + 1]] = (letter, None)
            i += 2
    return statuses


def parse_numstat(out: str) -> list[dict[str, Any]]:
    """``--numstat -z``: one dict per file with additions, deletions and binary."""
    fields = out.split("\0")
    files = []
    i = 0
    while i < len(fields) and fields[i]:
        adds, dels, path = fields[i].split("\t", 2)
        old = None
        if not path:  # rename: old and new names follow as their own fields
            old, path = fields[i + 1], fields[i + 2]
            i += 3
        else:
            i += 1
        binary = adds == "-"
        files.append({
            "path": path, "old_path": old, "additions": 0 if binary else int(adds),
            "deletions": 0 if binary else int(dels), "binary": binary,
        })
    return files


def parse_log(out: str) -> list[dict[str, str]]:
    commits = []
    for record in out.split("\x1e"):
        record = record.strip("\n")
        if not record:
            continue
        sha, short, author, email, date, summary = record.split("\0", 5)
        commits.append({"sha": sha, "short": short, "author": author, "email": email,
                        "date": date, "summary": summary})
    return commits


def parse_show(out: str) -> dict[str, Any]:
    sha, short, author, email, date, parents, message = out.split("\0", 6)
    return {"sha": sha, "short": short, "author": author, "email": email, "date": date,
            "message": message.rstrip("\n"), "parents": parents.split()}


def parse_blame(out: str, max_lines: int) -> tuple[list[dict[str, Any]], bool]:
    """``git blame --porcelain``: one dict per line; True when cut at ``max_lines``."""
    info: dict[str, dict[str, str]] = {}
    lines: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for raw in out.split("\n"):
        if raw.startswith("\t"):
            sha = current["sha"]
            meta = info.setdefault(sha, {})
            lines.append({"line": current["line"], "sha": sha, "short": sha[:7],
                          "author": meta.get("author", ""), "date": meta.get("date", ""),
                          "text": raw[1:]})
            if len(lines) >= max_lines:
                return lines, True
            continue
        head, _, rest = raw.partition(" ")
        if len(head) in (40, 64) and all(c in "0123456789abcdef" for c in head):
            current = {"sha": head, "line": int(rest.split()[1])}
            info.setdefault(head, {})
        elif head == "author" and current:
            info[current["sha"]]["author"] = rest
        elif head == "author-time" and current:
            info[current["sha"]]["time"] = rest
        elif head == "author-tz" and current:
            meta = info[current["sha"]]
            meta["date"] = _iso(int(meta.get("time", "0")), rest)
    return lines, False


def _iso(epoch: int, tz: str) -> str:
    from datetime import datetime, timedelta, timezone

    sign = -1 if tz.startswith("-") else 1
    try:
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5])) * sign
    except ValueError:
        offset = timedelta(0)
    return datetime.fromtimestamp(epoch, timezone(offset)).isoformat()
