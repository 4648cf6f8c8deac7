"""Test generation, test run and test insertion requests."""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_ds.requests import wire_field


@dataclass
class TestsRequest:
    """``POST jupyter-ds/v1/tests``: generate verified tests for one function.

    The code comes as ``source`` text, or from ``path`` (a ``.py`` file under the server
    root); ``path`` also names the module (``pkg/stats.py`` -> ``stats``).
    """

    __test__ = False  # not a pytest class
    source: str | None = wire_field(None, max_chars="max_input_chars")
    path: str | None = wire_field(None, max_chars="max_name_chars")
    target: str | None = wire_field(None, max_chars="max_name_chars")
    existing_tests: str | None = wire_field(None, max_chars="max_input_chars")
    rounds: int = wire_field(2, min=1, max=5)
    max_tokens: int | None = wire_field(None, min=16, max_setting="max_tokens_limit")
    stream: bool = wire_field(False)


@dataclass
class TestsRunRequest:
    """``POST jupyter-ds/v1/tests/run``: run given tests against given source."""

    __test__ = False
    tests: str = wire_field(max_chars="max_input_chars")
    source: str | None = wire_field(None, max_chars="max_input_chars")
    path: str | None = wire_field(None, max_chars="max_name_chars")
    # The module's file is written in the sandbox: an identifier a file name can hold.
    module: str | None = wire_field(None, max_chars="max_name_chars",
                                pattern=r"[A-Za-z_][A-Za-z0-9_]{0,59}")
    runs: int = wire_field(1, min=1, max=10)


@dataclass
class TestsInsertRequest:
    """``POST jupyter-ds/v1/tests/insert``: write kept tests next to ``path``'s tests."""

    __test__ = False
    path: str = wire_field(max_chars="max_name_chars")
    tests: list[str] = wire_field(max_items=200)  # noqa: RUF009 - a dataclasses.field
    imports: list[str] = wire_field(default_factory=list, max_items=200)  # noqa: RUF009
    test_path: str | None = wire_field(None, max_chars="max_name_chars")
