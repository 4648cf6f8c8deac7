"""Property-based fuzzing of the request schemas (hypothesis).

Every route's body is generated two ways: arbitrary JSON values, and objects with the
route's real field names holding values of random types (well-typed ones among them, so
that valid requests are generated too), plus unknown keys. The properties:

* :func:`~jupyter_ds.requests.parse_request` either builds the request, and then every
  field has its declared type and is within its limits (no NUL, no lone surrogate, length,
  range), or refuses it with a 400/413 ``ApiError`` that, for an object body, names a
  field of that route which is indeed at fault (present, or required and missing);
* through the real server (fewer examples), every answer is 2xx, or a 4xx error envelope
  that names the field at fault; never a 5xx, never a traceback.

Bounded: ``max_examples`` per property, the tiny model and a few tokens at most.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from typing import Any

import pytest
from gitrepos import RepoFactory, isolate_git_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_hostile import BASE_BODIES, SOURCE, _allowed, _is_list

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.errors import ApiError
from jupyter_ds.explain.requests import ExplainRequest
from jupyter_ds.finetune.requests import AdapterLoadRequest, FinetuneRequest
from jupyter_ds.git.requests import READ_VERBS, WRITE_VERBS, parse_git, wire_name
from jupyter_ds.requests import DEFAULT_LIMITS, parse_request
from jupyter_ds.testgen.requests import TestsInsertRequest, TestsRequest, TestsRunRequest

TRACEBACK = "Traceback (most recent call last)"
LIMITS = {"max_input_chars": 3000, "max_name_chars": 300, "max_tokens_limit": 1024}

ROUTES: dict[str, type] = {
    "complete": CompleteRequest,
    "explain": ExplainRequest,
    "tests": TestsRequest,
    "tests/run": TestsRunRequest,
    "tests/insert": TestsInsertRequest,
    **{f"git/{verb}": cls for verb, cls in WRITE_VERBS.items()},
}
# Admin bodies are fuzzed through the validator only (a valid one would start a job).
SCHEMAS = sorted({*ROUTES.values(), *READ_VERBS.values(), AdapterLoadRequest, FinetuneRequest},
                 key=lambda c: c.__name__)
GIT = {*READ_VERBS.values(), *WRITE_VERBS.values()}

# -- strategies ----------------------------------------------------------------------------

# Text with what JSON can carry and the server must refuse: NUL, lone surrogates, and
# strings around the limits.
chars = st.characters(exclude_categories=()) | st.characters(categories=["Cs"]) | st.just(
    "\x00")
texts = st.one_of(
    st.text(max_size=12),
    st.text(chars, max_size=12),
    st.sampled_from(["", ".", "..", "../x", "/etc/passwd", "-x", "--upload-pack=x", "a..b",
                     "@{-1}", "HEAD", "main", "repo", "x.py", "<|endoftext|>", "<file_sep>"]),
    st.integers(0, 4).map(lambda k: "a" * (LIMITS["max_name_chars"] - 2 + k)),
    st.integers(0, 4).map(lambda k: "b" * (LIMITS["max_input_chars"] - 2 + k)),
)
numbers = st.one_of(
    st.integers(-5, 1100), st.integers(), st.just(10**40),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=10,
)


def _object_list(annotation: Any) -> type | None:
    """The item dataclass of a ``list[Dataclass] | None`` field (CompleteRequest.cells)."""
    for hint in _allowed(annotation):
        if _is_list(hint) and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            return typing.get_args(hint)[0]
    return None


def typed_values(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of the declared type (often valid) mixed with values of any type."""
    item = _object_list(annotation)
    if item is not None:
        good = st.none() | st.lists(st.deferred(lambda: object_bodies(item)), max_size=3)
    elif _is_list(annotation):
        good = st.lists(texts, max_size=5) | st.integers(199, 202).map(lambda n: ["t"] * n)
    else:
        options = []
        allowed = _allowed(annotation)
        if str in allowed:
            options.append(texts)
        if bool in allowed:
            options.append(st.booleans())
        if int in allowed:
            options.append(st.integers(-2, 12) | numbers)
        if float in allowed:
            options.append(st.floats(-1, 3) | numbers)
        if type(None) in allowed:
            options.append(st.none())
        good = st.one_of(options)
    return st.one_of(good, good, json_values)


def object_bodies(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    fields = {wire_name(f.name): typed_values(hints[f.name]) for f in dataclasses.fields(cls)}
    known = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(st.sampled_from(["mime", "number", "stream", "x", "__class__"]),
                            json_values, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


def bodies(cls: type) -> st.SearchStrategy[Any]:
    return st.one_of(json_values, object_bodies(cls), object_bodies(cls))


# -- properties of the parser ----------------------------------------------------------


def parse(cls: type, body: Any) -> Any:
    return (parse_git if cls in GIT else parse_request)(cls, body, LIMITS)


def field_specs(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {wire_name(f.name): (hints[f.name], f) for f in dataclasses.fields(cls)}


def required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def check_text(value: str, limit: int | None) -> None:
    assert "\x00" not in value
    value.encode("utf-8")  # no lone surrogate
    if limit is not None:
        assert len(value) <= limit


def check_parsed(cls: type, req: Any) -> None:
    """Every field of an accepted request has its type and is within its limits."""
    limits = {**DEFAULT_LIMITS, **LIMITS}
    for name, (annotation, f) in field_specs(cls).items():
        value = getattr(req, f.name)
        meta = f.metadata
        item = _object_list(annotation)
        if item is not None:
            assert value is None or (isinstance(value, list)
                                     and len(value) <= meta.get("max_items", 100)), name
            for each in value or []:
                check_parsed(item, each)
            continue
        if _is_list(annotation):
            assert isinstance(value, list) and len(value) <= meta.get("max_items", 100)
            for item in value:
                assert isinstance(item, str)
                check_text(item, limits["max_input_chars"])
            continue
        allowed = _allowed(annotation)
        if value is None:
            assert type(None) in allowed, name
        elif isinstance(value, bool):
            assert bool in allowed, name
        elif isinstance(value, int):
            assert int in allowed, name
        elif isinstance(value, float):
            assert float in allowed and not math.isnan(value), name
        else:
            assert isinstance(value, str) and str in allowed, name
            check_text(value, limits.get(meta.get("max_chars", ""), None))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low = meta.get("min")
            high = limits[meta["max_setting"]] if "max_setting" in meta else meta.get("max")
            assert low is None or value >= low, name
            assert high is None or value <= high, name


def check_refusal(cls: type, body: Any, exc: ApiError) -> None:
    assert exc.status in (400, 413), exc
    assert exc.code in ("invalid_request", "payload_too_large"), exc
    assert TRACEBACK not in exc.message
    if not isinstance(body, dict):
        return
    specs = field_specs(cls)
    top = exc.field.split("[", 1)[0]  # cells[2].source: the field is cells
    assert top in specs, f"refusal of an object body names no field: {exc.message}"
    assert exc.field in exc.message
    # The field at fault is in the body, or it is required and missing.
    assert top in body or required(specs[top][1]), exc.message


@pytest.mark.parametrize("cls", SCHEMAS, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_request_accepts_valid_and_names_the_field_of_invalid(cls, data):
    body = data.draw(bodies(cls), label="body")
    try:
        req = parse(cls, body)
    except ApiError as exc:
        check_refusal(cls, body, exc)
    else:
        assert isinstance(body, dict)
        check_parsed(cls, req)


@settings(max_examples=40, deadline=None)
@given(body=object_bodies(CompleteRequest))
def test_a_field_fixed_alone_is_accepted_or_another_field_is_named(body):
    """Refusals are per field: replacing the named field by a valid value moves on."""
    valid = {"prefix": "x", "suffix": "", "language": "python", "path": None, "cell_id": None,
             "max_tokens": 4, "temperature": 0.5, "n": 1, "adapter": None, "cells": None}
    named: list[str] = []
    for _ in range(len(valid) + 1):
        try:
            parse_request(CompleteRequest, body, LIMITS)
            return
        except ApiError as exc:
            top = exc.field.split("[", 1)[0]  # cells[2].source: fix cells
            assert top not in named, f"{top} named twice"
            named.append(top)
            body = {**body, top: valid[top]}
    raise AssertionError(f"still refused after fixing {named}")


# -- through the real server --------------------------------------------------------------


@pytest.fixture
def ds_config() -> dict[str, Any]:
    return {"max_input_chars": 3000, "max_body_bytes": 50_000, "max_tokens": 4,
            "explain_max_tokens": 4, "testgen_max_tokens": 16, "testgen_runs": 1,
            "max_tokens_limit": 16}


def near_valid(route: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body of ``route`` with at most one field replaced by a generated value."""
    cls, base = BASE_BODIES[route]
    hints = typing.get_type_hints(cls)
    fields = [(wire_name(f.name), hints[f.name]) for f in dataclasses.fields(cls)]
    one = st.sampled_from(fields).flatmap(
        lambda nf: typed_values(nf[1]).map(lambda v, name=nf[0]: {**base, name: v}))
    return st.just(dict(base)) | one


def http_bodies() -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(sorted(ROUTES)).flatmap(
        lambda route: st.tuples(
            st.just(route),
            st.one_of(json_values, object_bodies(ROUTES[route]), near_valid(route),
                      near_valid(route))))


@pytest.fixture
def fuzz_root(jp_root_dir, tmp_path, monkeypatch):
    """A repository and a module under the root, so that valid bodies do real work."""
    isolate_git_config(monkeypatch, tmp_path)
    RepoFactory(jp_root_dir).init("repo")
    (jp_root_dir / "calc.py").write_text(SOURCE)
    return jp_root_dir


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=http_bodies())
def test_the_server_answers_every_body_with_2xx_or_a_clear_4xx(
    ds_ready, fuzz_root, jp_asyncio_loop, http_server_client, jp_base_url, jp_auth_header,
    caplog, case,
):
    route, body = case
    if isinstance(body, dict) and "max_tokens" in body and isinstance(body["max_tokens"], int):
        body = {**body, "max_tokens": body["max_tokens"] % 17}  # a few tokens at most
    if isinstance(body, dict) and isinstance(body.get("rounds"), int):
        body = {**body, "rounds": 1}
    response = jp_asyncio_loop.run_until_complete(http_server_client.fetch(
        f"{jp_base_url}jupyter-ds/v1/{route}", method="POST", body=json.dumps(body),
        headers=jp_auth_header, raise_error=False, request_timeout=120))
    text = response.body.decode("utf-8", "replace")
    event(f"HTTP {response.code // 100}xx")
    assert TRACEBACK not in text
    assert response.code < 500, (route, body, response.code, text[:500])
    if response.code >= 400:
        env = json.loads(text)
        assert env["status"] == "error" and env["error"]["message"], env
        if isinstance(body, dict) and response.code in (400, 413):
            field = env["error"].get("field")
            assert field is not None, (route, body, env)
    elif "application/json" in response.headers.get("Content-Type", ""):
        assert json.loads(text)["status"] == "success"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, (route, body, errors)
