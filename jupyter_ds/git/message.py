"""Commit-message drafting: a bounded staged diff in, a checked message out.

The model sees a summary of the changed files and as much of the diff as the prompt
budget allows: binary files are only named, and the largest hunks are trimmed first (a
huge generated file should not crowd out the small edit that explains the commit). Its
answer is then cleaned (fences, quotes, "Commit message:" preambles) and the summary line
is checked: non-empty and at most 72 characters, cut at a word boundary. When nothing
usable comes back, a summary built from the file list stands in and ``fallback`` says so.
"""

from __future__ import annotations

import re
from typing import Any

SUMMARY_MAX = 72
SYSTEM = (
    "You write git commit messages. Answer with the message only: a summary line in the "
    "conventional-commit style (type: what changed), at most 72 characters, then a blank "
    "line and a short body saying why."
)
_HUNK = re.compile(r"^@@ .*@@.*$", re.M)
_PREAMBLE = re.compile(
    r"^\s*(?:here(?:'s| is)[^:\n]*:|(?:suggested |proposed )?commit message\s*:|summary\s*:|"
    r"subject\s*:|message\s*:)\s*", re.I)


def file_summary(files: list[dict[str, Any]]) -> str:
    lines = []
    for f in files:
        name = f["path"] if not f.get("old_path") else f"{f['old_path']} -> {f['path']}"
        stat = "binary" if f.get("binary") else f"+{f['additions']} -{f['deletions']}"
        lines.append(f"{f['status']} {name} ({stat})")
    return "\n".join(lines)


def _split_hunks(text: str) -> list[str]:
    """The diff cut before every file header and hunk header, keeping all text."""
    cuts = sorted({0, *(m.start() for m in _HUNK.finditer(text)),
                   *(m.start() for m in re.finditer(r"^diff --git ", text, re.M))})
    return [text[a:b] for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True) if b > a]


def bound_diff(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` within ``max_chars``: the largest hunks trimmed first; True if trimmed."""
    if len(text) <= max_chars:
        return text, False
    pieces = _split_hunks(text)
    total = sum(map(len, pieces))
    for index in sorted(range(len(pieces)), key=lambda i: -len(pieces[i])):
        if total <= max_chars:
            break
        piece = pieces[index]
        head = piece.split("\n", 1)[0]
        if not head.startswith("@@"):
            continue  # keep file headers: they name what changed
        dropped = piece.count("\n")
        keep_lines = piece.split("\n")[1:4]
        short = "\n".join([head, *keep_lines, f"... ({dropped} lines trimmed)"]) + "\n"
        total -= len(piece) - len(short)
        pieces[index] = short
    out = "".join(pieces)
    return (out[:max_chars].rsplit("\n", 1)[0] + "\n... (diff cut)\n", True) \
        if len(out) > max_chars else (out, True)


def build_user_prompt(files: list[dict[str, Any]], diff: str) -> str:
    return (f"Write the commit message for these staged changes.\n\nFiles:\n"
            f"{file_summary(files)}\n\nDiff:\n```diff\n{diff.rstrip()}\n```")


def cut_summary(line: str, limit: int = SUMMARY_MAX) -> str:
    """``line`` within ``limit`` characters, cut at a word boundary where there is one."""
    line = " ".join(line.split())
    if len(line) <= limit:
        return line
    cut = line[: limit + 1].rsplit(" ", 1)[0]
    return (cut if len(cut) >= limit // 2 else line[:limit]).rstrip(" ,;:-")


# Model control tokens (<|im_end|>, <file_sep>, <jupyter_output>, ...) and characters that
# do not belong in a commit message: control characters and undecodable bytes.
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|]{1,40}\|>|<(?:file_sep|filename|repo_name|jupyter_\w+|"
                            r"fim_\w+|empty_output|issue_\w+|commit_\w+|gh_stars)>")
_JUNK_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")


def _clean(text: str) -> str:
    text = _JUNK_CHARS.sub("", _SPECIAL_TOKEN.sub("", text)).strip()
    text = re.sub(r"^```[\w-]*\n?", "", text)
    text = re.sub(r"\n?```\s*$", "", text)
    lines = text.strip().split("\n")
    while lines and (not lines[0].strip() or _PREAMBLE.fullmatch(lines[0])):
        lines.pop(0)
    if lines:
        lines[0] = _PREAMBLE.sub("", lines[0])
    return "\n".join(lines).strip().strip("`").strip()


def _unquote(line: str) -> str:
    line = line.strip().lstrip("#*-> ").rstrip("*").strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
        line = line[1:-1].strip()
    return line


def fallback_summary(files: list[dict[str, Any]]) -> str:
    verbs = {"A": "Add", "D": "Remove", "R": "Rename"}
    kinds = {verbs.get(f["status"], "Update") for f in files}
    verb = kinds.pop() if len(kinds) == 1 else "Update"
    names = [f["path"].rsplit("/", 1)[-1] for f in files]
    text = f"{verb} {', '.join(names)}"
    if len(text) > SUMMARY_MAX:
        text = f"{verb} {names[0]} and {len(names) - 1} more files"
    return cut_summary(text)


def postprocess(text: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's text as ``{output, summary, body, fallback}`` with a checked summary."""
    lines = _clean(text).split("\n")
    summary = cut_summary(_unquote(lines[0])) if lines else ""
    body = "\n".join(lines[1:]).strip()
    fallback = not re.search(r"[A-Za-z]{2}", summary)
    if fallback:
        summary, body = fallback_summary(files), ""
    output = summary + (f"\n\n{body}" if body else "")
    return {"output": output, "summary": summary, "body": body, "fallback": fallback}
