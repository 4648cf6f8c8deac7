"""The body of ``POST jupyter-ds/v1/telemetry``, validated field by field.

``{"events": [{"event", "request_id", "accepted_chars"?, "client"?}, ...]}``, at most
:data:`MAX_EVENTS` events. Each event is parsed by the one request validator
(:func:`jupyter_ds.requests.parse_request`); what this module adds is the list around
them and strictness: an unknown field, at the top or in an event, is a 400 that names it.
Other routes ignore unknown fields for clients that speak a newer protocol; here a field
nobody reads could only be a place to put code text, which telemetry must never carry.
Errors name the field as ``events[3].event``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from jupyter_ds.errors import ApiError, bad_request
from jupyter_ds.json_logs import REQUEST_ID_PATTERN
from jupyter_ds.requests import parse_request, wire_field

#: What a client may report about a suggestion.
EVENT_KINDS = ("shown", "accepted", "partially_accepted", "dismissed")
#: Events in one request, at most.
MAX_EVENTS = 100
#: A client's short name (``jupyterlab``, ``lsp``, ``neovim``...).
CLIENT_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"


@dataclass
class TelemetryEvent:
    """One report about one answered completion (by its ``request_id``)."""

    event: str = wire_field(pattern="|".join(EVENT_KINDS))
    # The completion's ``data.request_id`` (its ``X-Request-Id``).
    request_id: str = wire_field(pattern=REQUEST_ID_PATTERN)
    # For ``partially_accepted``: the characters of the suggestion the user kept.
    accepted_chars: int | None = wire_field(None, min=0, max_setting="max_input_chars")
    client: str | None = wire_field(None, pattern=CLIENT_NAME)


FIELDS = tuple(f.name for f in dataclasses.fields(TelemetryEvent))


def _name(key: object) -> str:
    return repr(str(key)[:40])


def parse_events(body: Any, limits: dict[str, int] | None = None) -> list[TelemetryEvent]:
    """The events of a decoded JSON body, or an ``ApiError`` (400) naming the field."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    for key in body:
        if key != "events":
            raise bad_request(f"unknown field {_name(key)}: the body has only 'events'",
                              str(key)[:40])
    if "events" not in body:
        raise bad_request("missing required field 'events'", "events")
    raw = body["events"]
    if not isinstance(raw, list):
        raise bad_request("field 'events' must be a list of objects", "events")
    if len(raw) > MAX_EVENTS:
        raise bad_request(
            f"field 'events' has {len(raw)} events, over the limit of {MAX_EVENTS}: "
            "send them in several requests", "events")
    return [_event(i, item, limits) for i, item in enumerate(raw)]


def _event(index: int, item: Any, limits: dict[str, int] | None) -> TelemetryEvent:
    where = f"events[{index}]"
    if not isinstance(item, dict):
        raise bad_request(f"field '{where}' must be an object", where)
    for key in item:
        if key not in FIELDS:
            raise bad_request(
                f"unknown field '{where}.{str(key)[:40]}': an event has only "
                f"{', '.join(FIELDS)}", f"{where}.{str(key)[:40]}")
    try:
        return parse_request(TelemetryEvent, item, limits)
    except ApiError as exc:
        field = f"{where}.{exc.field}" if exc.field else where
        raise ApiError(exc.status, exc.code, f"{where}: {exc.message}", field=field) from None
