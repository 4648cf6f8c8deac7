"""Rate limits: a token bucket per user and endpoint, and concurrent generations per user.

Configured on ``JupyterDsApp``::

    c.JupyterDsApp.rate_limits = {"complete": "20/s burst 40", "explain": "30/m", "*": "5/s"}
    c.JupyterDsApp.max_concurrent_per_user = 4

A rate is ``<count>/<unit>`` with the unit ``s``, ``m``, ``h`` or ``d`` (``second``,
``minute``, ``hour``, ``day`` also read), optionally followed by ``burst <n>``: the bucket
holds ``n`` requests (default: ``count``, i.e. a whole unit's worth may come at once) and
refills at ``count`` per unit. ``off`` (or ``unlimited``) exempts an endpoint from a
wildcard. Keys are endpoint names (``complete``, ``explain``, ``tests/run``,
``git/status``, ...), a prefix wildcard (``git/*``, ``tests/*``) or ``*`` for every other
endpoint; the most specific key applies, and every endpoint has its own bucket per user.
The WebSocket completion stream (``complete/stream``) counts each request message against
the ``complete`` bucket, so a socket is no way around the REST limit.

Over the limit: 429 ``rate_limited`` with ``Retry-After`` (whole seconds, at least 1) in
the header and ``error.retry_after`` in the envelope.

``max_concurrent_per_user`` caps how many generations (completion, explanation, test
generation, commit message) and sandbox runs (``tests/run``) one user runs at once; the
next one is 429 until one ends. A slot is held while its work runs, released on every
exit path (answer, error, timeout, cancellation, a client that went away: the work then
stops at its next token or ends with its timeout, and the slot with it), and releasing
twice is harmless.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jupyter_ds.errors import ApiError

# Endpoints whose requests run the model: they take a generation slot.
GENERATION_ENDPOINTS = frozenset(
    {"complete", "complete/stream", "explain", "tests", "tests/run", "git/commit-message"}
)
# Endpoints that count against another one's bucket.
BUCKET_ALIASES = {"complete/stream": "complete"}

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_RATE = re.compile(
    r"\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[a-z]+)"
    r"(?:\s+burst\s+(?P<burst>\d+))?\s*",
    re.IGNORECASE,
)
_OFF = frozenset({"off", "none", "unlimited"})
RATE_FORMAT = "'<count>/<s|m|h|d>[ burst <n>]', e.g. '20/s burst 40' or '600/m', or 'off'"


@dataclass(frozen=True)
class Rate:
    """``per_second`` tokens refill a bucket of ``burst``; None values mean unlimited."""

    per_second: float
    burst: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate(text: Any) -> Rate | None:
    """A :class:`Rate` from ``'20/s burst 40'``; None for ``'off'``; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a rate: write {RATE_FORMAT}")
    if text.strip().lower() in _OFF:
        return None
    m = _RATE.fullmatch(text)
    unit = m.group("unit").lower() if m else ""
    if unit not in _UNITS and len(unit) > 3 and unit[:-1] in _UNITS:  # minutes, hours
        unit = unit[:-1]
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a rate: write {RATE_FORMAT}")
    count = float(m.group("count"))
    if count <= 0:
        raise ValueError(f"{text!r}: the count must be above 0 (use 'off' for no limit)")
    burst = float(m.group("burst")) if m.group("burst") else max(1.0, math.floor(count))
    if burst < 1:
        raise ValueError(f"{text!r}: burst must be at least 1")
    return Rate(count / _UNITS[unit], burst, " ".join(text.split()))


def parse_limits(limits: Mapping[str, Any], known: Any = None) -> dict[str, Rate | None]:
    """Validate a ``rate_limits`` mapping; ValueError naming the bad key and what is wrong.

    ``known``: the endpoint names that exist (keys are checked against them when given).
    """
    out: dict[str, Rate | None] = {}
    known_set = set(known) if known is not None else None
    for key, text in limits.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"rate_limits: key {key!r} is not an endpoint name")
        key = key.strip().strip("/")
        if known_set is not None and key != "*":
            if key.endswith("/*"):
                stem = key[:-1]
                ok = any(name.startswith(stem) for name in known_set)
            else:
                ok = key in known_set
            if not ok:
                raise ValueError(
                    f"rate_limits: unknown endpoint {key!r}; use one of "
                    f"{', '.join(sorted(known_set))}, a prefix like 'git/*', or '*'"
                )
        try:
            out[key] = parse_rate(text)
        except ValueError as exc:
            raise ValueError(f"rate_limits[{key!r}]: {exc}") from None
    return out


class TokenBucket:
    """Holds up to ``rate.burst`` tokens, refilled at ``rate.per_second``; one per request."""

    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float):
        self.per_second = rate.per_second
        self.burst = rate.burst
        self.tokens = rate.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when one was there, else the seconds until there will be one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.per_second

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


def retry_after_seconds(wait: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1."""
    return max(1, math.ceil(wait - 1e-9))


class GenerationSlot:
    """One running generation of ``user``; :meth:`release` frees it (once)."""

    __slots__ = ("_limiter", "released", "user")

    def __init__(self, limiter: RateLimiter | None, user: str):
        self._limiter = limiter
        self.user = user
        self.released = limiter is None

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._limiter is not None:
            self._limiter._release(self.user)

    def __enter__(self) -> GenerationSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RateLimiter:
    """Token buckets per (user, endpoint) and a count of running generations per user."""

    #: Buckets are dropped once full again (an idle user costs nothing) when there are
    #: more than this many.
    PRUNE_ABOVE = 4096

    def __init__(
        self,
        limits: Mapping[str, Any] | None = None,
        max_concurrent_per_user: int = 0,
        clock: Callable[[], float] = time.monotonic,
        known_endpoints: Any = None,
    ):
        self.limits = parse_limits(limits or {}, known_endpoints)
        if max_concurrent_per_user < 0:
            raise ValueError("max_concurrent_per_user must be 0 (no limit) or more")
        self.max_concurrent = int(max_concurrent_per_user)
        self.clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- rates --------------------------------------------------------------------------

    def rate_for(self, endpoint: str) -> Rate | None:
        """The rate that applies to ``endpoint``: exact key, longest ``prefix/*``, ``*``."""
        endpoint = BUCKET_ALIASES.get(endpoint, endpoint)
        if endpoint in self.limits:
            return self.limits[endpoint]
        best: tuple[int, Rate | None] | None = None
        for key, rate in self.limits.items():
            if key.endswith("/*") and endpoint.startswith(key[:-1]):
                if best is None or len(key) > best[0]:
                    best = (len(key), rate)
        if best is not None:
            return best[1]
        return self.limits.get("*")

    def check(self, user: str, endpoint: str) -> None:
        """Count one request of ``user`` on ``endpoint``; 429 ``ApiError`` when over."""
        rate = self.rate_for(endpoint)
        if rate is None:
            return
        bucket_key = BUCKET_ALIASES.get(endpoint, endpoint)
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get((user, bucket_key))
            if bucket is None:
                if len(self._buckets) > self.PRUNE_ABOVE:
                    self._prune(now)
                bucket = self._buckets[(user, bucket_key)] = TokenBucket(rate, now)
            wait = bucket.take(now)
        if wait > 0:
            seconds = retry_after_seconds(wait)
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit for '{bucket_key}' exceeded ({rate}); retry in {seconds} s",
                retry_after=seconds,
            )

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]

    # -- concurrency --------------------------------------------------------------------

    def acquire(self, user: str) -> GenerationSlot:
        """A generation slot for ``user``; 429 ``ApiError`` when they have none left."""
        if self.max_concurrent <= 0:
            return GenerationSlot(None, user)
        with self._lock:
            running = self._running.get(user, 0)
            if running >= self.max_concurrent:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"{running} generations of yours are already running "
                    f"(max_concurrent_per_user = {self.max_concurrent}); wait for one "
                    "to finish or cancel it",
                    retry_after=1,
                )
            self._running[user] = running + 1
        return GenerationSlot(self, user)

    def _release(self, user: str) -> None:
        with self._lock:
            left = self._running.get(user, 0) - 1
            if left > 0:
                self._running[user] = left
            else:
                self._running.pop(user, None)

    def running(self, user: str) -> int:
        with self._lock:
            return self._running.get(user, 0)

    def admit(self, user: str, endpoint: str) -> GenerationSlot | None:
        """Rate check, then a generation slot for model endpoints (None for the others)."""
        self.check(user, endpoint)
        if endpoint in GENERATION_ENDPOINTS:
            return self.acquire(user)
        return None
