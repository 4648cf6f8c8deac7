"""The REST specification file stays in step with the routes and request dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.explain.requests import ExplainRequest
from jupyter_ds.finetune.requests import AdapterLoadRequest, FinetuneRequest
from jupyter_ds.git.requests import GIT_REQUESTS, READ_VERBS, wire_name
from jupyter_ds.handlers import API_PREFIX, ROUTES
from jupyter_ds.requests import ADAPTER_NAME, DEFAULT_LIMITS
from jupyter_ds.telemetry import TelemetryEvent
from jupyter_ds.testgen.requests import TestsInsertRequest, TestsRequest, TestsRunRequest

SPEC = yaml.safe_load((Path(__file__).parents[1] / "docs" / "openapi.yaml").read_text())


def test_every_http_route_is_specified():
    for path, cls in ROUTES:
        if path.endswith("stream"):
            continue
        path = path.replace(f"({ADAPTER_NAME})", "{name}")
        spec = SPEC["paths"][f"/{API_PREFIX}/{path}"]
        verbs = {m for m in ("get", "post", "put", "delete", "patch") if m in vars(cls)}
        assert set(spec) == verbs, path
        for verb in verbs:
            assert cls.auth_resource in spec[verb]["summary"], (path, verb)


def test_request_schemas_match_the_dataclasses():
    for cls in (CompleteRequest, ExplainRequest, TestsRequest, TestsRunRequest,
                TestsInsertRequest, AdapterLoadRequest, FinetuneRequest, TelemetryEvent,
                *GIT_REQUESTS):
        name = cls.__name__
        schema = SPEC["components"]["schemas"][name]
        fields = {wire_name(f.name): f for f in dataclasses.fields(cls)}
        assert set(schema["properties"]) == set(fields), name
        required = {
            n for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        assert set(schema["required"]) == required, name
        for fname, f in fields.items():
            prop = schema["properties"][fname]
            if "max_chars" in f.metadata and "maxLength" in prop:
                assert prop["maxLength"] == DEFAULT_LIMITS[f.metadata["max_chars"]]
            if "max_setting" in f.metadata:
                assert prop["maximum"] == DEFAULT_LIMITS[f.metadata["max_setting"]]
            elif "max" in f.metadata:
                assert prop["maximum"] == f.metadata["max"]


def test_git_query_parameters_match_the_dataclasses():
    for verb, cls in READ_VERBS.items():
        params = SPEC["paths"][f"/{API_PREFIX}/git/{verb}"]["get"]["parameters"]
        assert {p["name"] for p in params} == {wire_name(f.name)
                                               for f in dataclasses.fields(cls)}, verb
        assert all(p["in"] == "query" for p in params), verb
