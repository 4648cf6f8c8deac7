"""Acceptance telemetry: what became of the completions the server answered.

Clients (JupyterLab's inline completer, the language server) report, by the completion's
``request_id``, that a suggestion was shown, accepted, partially accepted or dismissed
(``POST jupyter-ds/v1/telemetry``). That is the production signal completion quality is
judged by: the acceptance rate per model and adapter, in Prometheus and in the usage report.

- :mod:`.memory`: the answered completions the server remembers (who asked, which model
  and adapter answered; never code), bounded in size and age.
- :mod:`.events`: the request body, validated strictly (unknown fields are refused, so no
  code text can ride along).
- :mod:`.count`: events matched against the memory, each kind counted at most once per
  completion, into the Prometheus counters and the audit record.
"""

from jupyter_ds.telemetry.count import Tally, count_events
from jupyter_ds.telemetry.events import EVENT_KINDS, MAX_EVENTS, TelemetryEvent, parse_events
from jupyter_ds.telemetry.memory import (
    COMPLETION_ENDPOINTS,
    Answered,
    AnsweredCompletions,
)

__all__ = [
    "COMPLETION_ENDPOINTS",
    "EVENT_KINDS",
    "MAX_EVENTS",
    "Answered",
    "AnsweredCompletions",
    "Tally",
    "TelemetryEvent",
    "count_events",
    "parse_events",
]
