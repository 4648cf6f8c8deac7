"""A queueing simulation of the engine tier: many users typing, replicas, routing, KEDA.

**A simulation, not a measurement.** ``benchmarks/scale.py`` measures what one
``ds-engine serve`` replica does on this machine (the time one completion takes alone,
and how much more a replica completes per second with 4 and 8 requests batched
together) and feeds those figures to this model, which then plays a whole team: up to
1,000 users typing, 2..10 replicas, the router of ``jupyter_ds/routing/pool.py`` and the
autoscaling rule of ``deploy/k8s/keda/scaledobject.yaml``. Pure Python, deterministic
for a seed, about a second per simulated half hour.

The model, and its assumptions (each a parameter):

* **Users** (:class:`UserModel`). A user who is online alternates typing bursts and
  pauses (reading, running cells), both exponential, typing ``typing_share`` of the time
  in bursts of ``burst_mean_s`` on average. While typing, the labextension asks for a
  completion at each pause in the typing longer than its debounce (250 ms): modelled as a
  request every ``request_interval_s`` on average (the debounce plus an exponential). A
  user's new request supersedes the one still pending (the labextension keeps the latest
  only, and the replica stops a request whose client went away): it is cancelled and
  counted as *superseded*, not as served or lost. Arrivals do not wait for answers (people
  type on), so the load is open-loop. How many users are online over time is a schedule.
* **A replica** (:class:`ServiceProfile`) runs up to ``max_batch`` requests at once and
  queues the rest. A request needs a *service time*: one drawn (with replacement) from the
  measured times of completions alone. With ``k`` requests in the batch the replica
  completes ``gain[k]`` times as many per second as alone, shared equally between them
  (processor sharing): each progresses at ``gain[k] / k`` of its solo speed. ``gain`` is
  the measured closed-loop requests/s at 4 and 8 clients over the rate at 1, interpolated
  in between and flat above the batch limit.
* **Prefix cache.** A replica keeps the KV prefix of the files it served. A request that
  lands on another replica than its user's previous one re-reads its whole prompt: its
  service time is multiplied by ``1 + miss_penalty`` (default 1.0, an assumption: the
  measured solo times are mostly prefix-cache hits, and without the cache the time to
  first token of a typing replay was ten times longer, ``benchmarks/results/typing.md``).
* **Routing** (:class:`SimConfig` ``router``), as :meth:`EnginePool.pick` does it:
  ``"global"``, one router that sees every request: a request goes to the replica that
  rendezvous hashing gives its user's file unless that one has more than
  ``affinity_slack`` requests outstanding above the least loaded, else to the least
  loaded. ``"per-user"``: every user's own Jupyter server routes (JupyterHub), so each
  pool counts only its own one outstanding request and the hash alone decides (as the
  Kubernetes Service's per-connection choice, sticky through keep-alive, roughly does).
* **Load shedding**: a replica with ``max_queued`` (64) requests waiting refuses more
  (the pool then tries the least loaded other one; when all refuse, the user gets 503);
  a request that has not started ``queue_timeout_s`` (5 s, ``completion_queue_timeout``)
  after it was sent is dropped (the router's RemoteEngine sheds a request with no text
  by its start deadline; the start stands in for the first text here). A completion
  answered after ``completion_timeout_s`` (30 s) counts as a timeout, not a latency.
* **Autoscaling** (:class:`KedaRule`, :class:`Autoscaler`): every ``polling_s`` the sum of
  the ready replicas' waiting requests (``vllm:num_requests_waiting``: queued, not in the
  batch) gives ``desired = ceil(sum / threshold)`` clamped to ``min..max`` (the HPA's
  AverageValue target; within its default 10 % tolerance nothing changes); scale-up at
  most ``up_pods`` per ``up_period_s`` with no stabilization window, scale-down to the
  highest recommendation of the last ``down_window_s``, at most ``down_pods`` per
  ``down_period_s``. A new pod takes ``pod_start_s`` to become ready (image, model
  load, warm-up: an assumption; the replica measured here got ready in seconds from its
  converted-model cache, a GPU pod in minutes). A removed pod takes nothing new and
  finishes what it holds. Prometheus' scrape interval (more lag) is not modelled.

Not modelled: network time between tiers (measured separately as the router's added
latency), explanations and tests (other routes), failures and the circuit breaker, per-
user rate limits and fair shares, the prefix cache's capacity (every file of a replica
stays cached), time to first token (whole answers only).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ds.audit.report import percentile
from jupyter_ds.routing.pool import AFFINITY_SLACK

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ServiceProfile:
    """What one replica does: solo service times (s) and the batching gain per size."""

    solo_s: tuple[float, ...]
    gain: tuple[float, ...]  # gain[k]: throughput with k in the batch / alone; gain[1] == 1

    def __post_init__(self) -> None:
        if not self.solo_s or min(self.solo_s) <= 0:
            raise ValueError("solo service times must be positive and not empty")
        if len(self.gain) < 2 or self.gain[1] != 1.0 or min(self.gain[1:]) <= 0:
            raise ValueError("gain[1] must be 1 and every gain positive")

    @property
    def max_batch(self) -> int:
        return len(self.gain) - 1

    @property
    def mean_solo_s(self) -> float:
        return sum(self.solo_s) / len(self.solo_s)

    @property
    def capacity_rps(self) -> float:
        """Completions per second of one replica with its batch full (no prefix misses)."""
        return self.gain[-1] / self.mean_solo_s

    def speed(self, k: int) -> float:
        """How fast each of ``k`` requests in the batch progresses (solo = 1)."""
        return self.gain[min(k, self.max_batch)] / k

    @classmethod
    def from_measurements(
        cls, solo_s: Iterable[float], rps_by_clients: dict[int, float], max_batch: int = 8
    ) -> ServiceProfile:
        """Solo times, and closed-loop requests/s by client count on one replica (1 must be
        among them): ``gain[k]`` = rps(k) / rps(1), linear in between, never falling, flat
        from the largest count measured (or ``max_batch``) on."""
        if 1 not in rps_by_clients or rps_by_clients[1] <= 0:
            raise ValueError("the rate at 1 client is needed")
        base = rps_by_clients[1]
        points = sorted((n, rps / base) for n, rps in rps_by_clients.items()
                        if 1 <= n <= max_batch and rps > 0)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ys[0] = 1.0
        gain = [0.0]
        for k in range(1, max_batch + 1):
            i = bisect.bisect_left(xs, k)
            if i < len(xs) and xs[i] == k:
                value = ys[i]
            elif i >= len(xs):
                value = ys[-1]
            else:
                x0, y0, x1, y1 = xs[i - 1], ys[i - 1], xs[i], ys[i]
                value = y0 + (y1 - y0) * (k - x0) / (x1 - x0)
            gain.append(max(value, gain[-1]) if k > 1 else 1.0)
        return cls(tuple(float(s) for s in solo_s), tuple(gain))


@dataclass(frozen=True)
class UserModel:
    """How people type (see the module docstring); times in seconds."""

    typing_share: float = 0.2
    burst_mean_s: float = 40.0
    request_interval_s: float = 3.0
    debounce_s: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.typing_share <= 1:
            raise ValueError("typing_share must be in (0, 1]")
        if self.request_interval_s <= self.debounce_s:
            raise ValueError("request_interval_s must be longer than the debounce")

    @property
    def rps_per_user(self) -> float:
        """Requests a second an online user sends on average."""
        return self.typing_share / self.request_interval_s


@dataclass(frozen=True)
class KedaRule:
    """``deploy/k8s/keda/scaledobject.yaml`` (:func:`keda_rule_from_yaml` reads it)."""

    threshold: float = 2.0
    min_replicas: int = 2
    max_replicas: int = 10
    polling_s: float = 15.0
    up_pods: int = 2
    up_period_s: float = 60.0
    up_window_s: float = 0.0
    down_pods: int = 1
    down_period_s: float = 120.0
    down_window_s: float = 300.0
    tolerance: float = 0.1  # the HPA controller's default


def keda_rule_from_yaml(path: str | Path) -> KedaRule:
    """The rule of a KEDA ScaledObject (its first trigger and its HPA behavior)."""
    import yaml

    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["spec"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    return KedaRule(
        threshold=float(spec["triggers"][0]["metadata"]["threshold"]),
        min_replicas=int(spec["minReplicaCount"]),
        max_replicas=int(spec["maxReplicaCount"]),
        polling_s=float(spec["pollingInterval"]),
        up_pods=int(up["policies"][0]["value"]),
        up_period_s=float(up["policies"][0]["periodSeconds"]),
        up_window_s=float(up.get("stabilizationWindowSeconds", 0)),
        down_pods=int(down["policies"][0]["value"]),
        down_period_s=float(down["policies"][0]["periodSeconds"]),
        down_window_s=float(down.get("stabilizationWindowSeconds", 300)),
    )


def desired_replicas(rule: KedaRule, waiting_total: float, current: int) -> int:
    """The HPA's recommendation for an AverageValue target: ``ceil(waiting / threshold)``
    clamped to min..max; ``current`` while the average per replica is within the
    tolerance of the threshold."""
    if current > 0 and abs(waiting_total / (rule.threshold * current) - 1) <= rule.tolerance:
        wanted = current
    else:
        wanted = math.ceil(waiting_total / rule.threshold - 1e-9)
    return max(rule.min_replicas, min(rule.max_replicas, wanted))


class Autoscaler:
    """The HPA that KEDA drives: recommendation, stabilization windows, rate policies."""

    def __init__(self, rule: KedaRule, replicas: int) -> None:
        self.rule = rule
        self.replicas = max(rule.min_replicas, min(rule.max_replicas, replicas))
        self._recommendations: deque[tuple[float, int]] = deque()
        self._changes: deque[tuple[float, int]] = deque()  # (time, +added / -removed)

    def step(self, now: float, waiting_total: float) -> int:
        """One poll: the replica count the Deployment is set to."""
        rule, current = self.rule, self.replicas
        raw = desired_replicas(rule, waiting_total, current)
        self._recommendations.append((now, raw))
        horizon = max(rule.up_window_s, rule.down_window_s)
        while self._recommendations and self._recommendations[0][0] < now - horizon:
            self._recommendations.popleft()
        up = min(r for t, r in self._recommendations if t >= now - rule.up_window_s)
        down = max(r for t, r in self._recommendations if t >= now - rule.down_window_s)
        target = current
        if up > current:
            target = up
        elif down < current:
            target = down
        added = sum(c for t, c in self._changes if c > 0 and t > now - rule.up_period_s)
        removed = -sum(c for t, c in self._changes if c < 0 and t > now - rule.down_period_s)
        if target > current:
            target = min(target, current - added + rule.up_pods)
            target = max(target, current)
        elif target < current:
            target = max(target, current + removed - rule.down_pods)
            target = min(target, current)
        target = max(rule.min_replicas, min(rule.max_replicas, target))
        if target != current:
            self._changes.append((now, target - current))
        while self._changes and self._changes[0][0] < now - max(rule.up_period_s,
                                                                rule.down_period_s):
            self._changes.popleft()
        self.replicas = target
        return target


@dataclass(frozen=True)
class SimConfig:
    """The tier around the replicas (defaults: the project's own)."""

    replicas: int = 10  # at the start; fixed unless ``autoscale``
    autoscale: KedaRule | None = None
    pod_start_s: float = 60.0
    router: str = "global"  # or "per-user"
    affinity_slack: int = AFFINITY_SLACK  # the pool's default
    miss_penalty: float = 1.0
    max_queued: int = 64
    queue_timeout_s: float = 5.0
    completion_timeout_s: float = 30.0
    sample_s: float = 60.0
    warmup_s: float = 0.0  # requests sent before this are left out of the statistics

    def __post_init__(self) -> None:
        if self.router not in ("global", "per-user"):
            raise ValueError("router must be 'global' or 'per-user'")
        if self.replicas < 1:
            raise ValueError("at least one replica")


# --------------------------------------------------------------------------- workload


def online_users(schedule: Sequence[tuple[float, int]], t: float) -> float:
    """Users online at ``t`` by a piecewise-linear schedule of (time, users) points."""
    if t <= schedule[0][0]:
        return schedule[0][1]
    for (t0, n0), (t1, n1) in itertools.pairwise(schedule):
        if t <= t1:
            return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else n1
    return schedule[-1][1]


def typing_arrivals(
    schedule: Sequence[tuple[float, int]], model: UserModel, duration_s: float, seed: int
) -> list[tuple[float, int]]:
    """(time, user) of every completion request, sorted. User ``i`` is online while
    ``i`` < the schedule's count (so users join and leave in order)."""
    rng = random.Random(seed)
    users = max(n for _, n in schedule)
    pause_mean = model.burst_mean_s * (1 - model.typing_share) / model.typing_share
    gap_mean = model.request_interval_s - model.debounce_s
    out: list[tuple[float, int]] = []
    for user in range(users):
        # Stationary from the start: both durations are exponential (memoryless).
        typing = rng.random() < model.typing_share
        t = 0.0
        while t < duration_s:
            if typing:
                end = t + rng.expovariate(1 / model.burst_mean_s)
                t += model.debounce_s + rng.expovariate(1 / gap_mean)
                while t < min(end, duration_s):
                    if user < online_users(schedule, t):
                        out.append((t, user))
                    t += model.debounce_s + rng.expovariate(1 / gap_mean)
                t = end
            elif pause_mean > 0:
                t += rng.expovariate(1 / pause_mean)
            typing = not typing
    out.sort()
    return out


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> list[tuple[float, int]]:
    """An M/·/· stream: Poisson arrivals, every request its own user (none supersedes)."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append((t, len(out)))


# --------------------------------------------------------------------------- the model


@dataclass(eq=False)
class _Job:
    id: int
    user: int
    arrival: float
    work: float
    replica: _Replica | None = None
    state: str = "new"  # waiting, running, done, superseded, shed, timeout
    vfinish: float = 0.0
    counted: bool = True


@dataclass(eq=False)
class _Replica:
    id: int
    ready_at: float
    ready: bool = False
    draining: bool = False
    removed: bool = False
    waiting: deque[_Job] = field(default_factory=deque)
    n_waiting: int = 0  # live ones in ``waiting``
    running: list[tuple[float, int, _Job]] = field(default_factory=list)  # heap by vfinish
    n_running: int = 0  # live ones in ``running``
    v: float = 0.0  # work done per running request since the start (virtual time)
    t: float = 0.0
    version: int = 0
    busy_s: float = 0.0  # time with something running
    served: int = 0

    @property
    def outstanding(self) -> int:
        return self.n_waiting + self.n_running


def _hash(user: int, replica: int) -> int:
    """A stable 64-bit score of (user's file, replica): rendezvous hashing."""
    x = (user * 0x9E3779B97F4A7C15 + replica * 0xBF58476D1CE4E5B9 + 1) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class Simulation:
    """One run: ``Simulation(profile, config, seed).run(arrivals, duration_s)``."""

    ARRIVE, FINISH, TIMEOUT, TICK, READY, SAMPLE = range(6)

    def __init__(self, profile: ServiceProfile, config: SimConfig, seed: int = 0,
                 schedule: Sequence[tuple[float, int]] | None = None) -> None:
        self.profile = profile
        self.config = config
        self.rng = random.Random(seed + 7919)
        self.schedule = schedule
        self.replicas: list[_Replica] = []
        self._next_replica = 0
        self.events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._jobs = 0
        self.pending: dict[int, _Job] = {}  # user -> their request in flight
        self.last_replica: dict[int, int] = {}  # user -> replica of their last start
        self.autoscaler = (Autoscaler(config.autoscale, config.replicas)
                           if config.autoscale else None)
        self.latencies: list[float] = []
        self.counts = {"sent": 0, "ok": 0, "superseded": 0, "shed_full": 0,
                       "shed_late": 0, "timeout": 0, "prefix_hits": 0, "prefix_misses": 0}
        self.timeline: list[dict[str, Any]] = []
        self._bucket: dict[str, Any] = self._new_bucket(0.0)
        self.replica_seconds = 0.0
        self._last_t = 0.0
        self._live = 0  # replicas not removed (running pods, ready or not)
        self._topology = 0  # changes whenever the usable replicas do
        self._usable_at = -1
        self._usable_list: list[_Replica] = []
        self._sticky: dict[int, tuple[int, _Replica]] = {}

    # ------------------------------------------------------------------ events

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, payload))

    def _new_bucket(self, start: float) -> dict[str, Any]:
        return {"start": start, "sent": 0, "latencies": [], "shed": 0, "timeouts": 0}

    def _usable(self) -> list[_Replica]:
        if self._usable_at != self._topology:
            self._usable_list = [r for r in self.replicas
                                 if r.ready and not r.removed and not r.draining]
            self._usable_at = self._topology
        return self._usable_list

    def _add_replica(self, now: float, ready_at: float) -> None:
        replica = _Replica(self._next_replica, ready_at, t=now)
        self._next_replica += 1
        self.replicas.append(replica)
        self._live += 1
        if ready_at > now:
            self._push(ready_at, self.READY, replica)
        else:
            self._ready(replica)

    def _ready(self, replica: _Replica) -> None:
        if not replica.removed and not replica.draining:
            replica.ready = True
            self._topology += 1

    def _remove(self, replica: _Replica) -> None:
        if not replica.removed:
            replica.removed = True
            self._live -= 1
            self._topology += 1

    # ------------------------------------------------------------------ a replica

    def _advance(self, r: _Replica, now: float) -> None:
        if r.n_running:
            r.v += self.profile.speed(r.n_running) * (now - r.t)
            r.busy_s += now - r.t
        r.t = now

    def _reschedule(self, r: _Replica, now: float) -> None:
        r.version += 1
        while r.running and r.running[0][2].state != "running":
            heapq.heappop(r.running)
        if r.running:
            left = max(0.0, r.running[0][0] - r.v)
            self._push(now + left / self.profile.speed(r.n_running), self.FINISH,
                       (r, r.version))

    def _fill(self, r: _Replica, now: float) -> None:
        """Move waiting requests into free batch slots."""
        while r.n_running < self.profile.max_batch and r.n_waiting:
            job = r.waiting.popleft()
            if job.state != "waiting":
                continue
            r.n_waiting -= 1
            job.state = "running"
            job.vfinish = r.v + job.work
            r.n_running += 1
            heapq.heappush(r.running, (job.vfinish, job.id, job))

    def _settle(self, r: _Replica, now: float) -> None:
        self._fill(r, now)
        self._reschedule(r, now)
        if r.draining and not r.outstanding:
            self._remove(r)

    # ------------------------------------------------------------------ requests

    def _choose(self, user: int, usable: list[_Replica]) -> _Replica:
        known = self._sticky.get(user)
        if known is not None and known[0] == self._topology:
            sticky = known[1]
        else:
            sticky = max(usable, key=lambda r: _hash(user, r.id))
            self._sticky[user] = (self._topology, sticky)
        if self.config.router == "per-user" or sticky.outstanding <= self.config.affinity_slack:
            # The user's own pool sees one request at most: the hash decides. Else no
            # replica has fewer than none outstanding: the sticky one is within the slack.
            return sticky
        least = min(usable, key=lambda r: (r.outstanding, r.served, r.id))
        if sticky.outstanding <= least.outstanding + self.config.affinity_slack:
            return sticky
        return least

    def _arrive(self, now: float, user: int) -> None:
        counted = now >= self.config.warmup_s
        old = self.pending.pop(user, None)
        if old is not None:
            self._cancel(old, now, "superseded")
        self.counts["sent"] += counted
        self._bucket["sent"] += 1
        usable = self._usable()
        self._jobs += 1
        job = _Job(self._jobs, user, now, self.rng.choice(self.profile.solo_s), counted=counted)
        if not usable:
            self._drop(job, "shed_full", now)
            return
        replica = self._choose(user, usable)
        if replica.n_waiting >= self.config.max_queued and self.config.max_queued > 0:
            # That replica sheds; the pool passes it over for the least loaded other one.
            others = [r for r in usable if r is not replica
                      and r.n_waiting < self.config.max_queued]
            if not others:
                self._drop(job, "shed_full", now)
                return
            replica = min(others, key=lambda r: (r.outstanding, r.served, r.id))
        previous = self.last_replica.get(user)
        if previous is not None and previous != replica.id:
            job.work *= 1 + self.config.miss_penalty
            self.counts["prefix_misses"] += counted
        else:
            self.counts["prefix_hits"] += counted
        self.last_replica[user] = replica.id
        job.replica = replica
        job.state = "waiting"
        replica.waiting.append(job)
        replica.n_waiting += 1
        replica.served += 1
        self.pending[user] = job
        self._push(now + self.config.queue_timeout_s, self.TIMEOUT, job)
        self._advance(replica, now)
        self._settle(replica, now)

    def _drop(self, job: _Job, why: str, now: float) -> None:
        job.state = "shed"
        self.counts[why] += job.counted
        self._bucket["shed"] += 1

    def _cancel(self, job: _Job, now: float, why: str) -> None:
        """Take ``job`` off its replica (superseded, or shed waiting past its deadline)."""
        r = job.replica
        assert r is not None
        was = job.state
        job.state = why if why == "superseded" else "shed"
        if why == "superseded":
            self.counts["superseded"] += job.counted
        else:
            self.counts[why] += job.counted
            self._bucket["shed"] += 1
        if was == "waiting":
            r.n_waiting -= 1
            if r.draining and not r.outstanding:
                self._remove(r)
        elif was == "running":
            self._advance(r, now)
            r.n_running -= 1
            self._settle(r, now)

    def _finish(self, now: float, r: _Replica, version: int) -> None:
        if version != r.version or r.removed:
            return
        self._advance(r, now)
        eps = 1e-9 * max(1.0, r.v)
        while r.running and (r.running[0][2].state != "running"
                             or r.running[0][0] <= r.v + eps):
            _, _, job = heapq.heappop(r.running)
            if job.state != "running":
                continue
            r.n_running -= 1
            if self.pending.get(job.user) is job:
                del self.pending[job.user]
            latency = now - job.arrival
            if latency > self.config.completion_timeout_s:
                job.state = "timeout"
                self.counts["timeout"] += job.counted
                self._bucket["timeouts"] += 1
            else:
                job.state = "done"
                if job.counted:
                    self.counts["ok"] += 1
                    self.latencies.append(latency)
                self._bucket["latencies"].append(latency)
        self._settle(r, now)

    def _timeout(self, now: float, job: _Job) -> None:
        if job.state == "waiting":
            if self.pending.get(job.user) is job:
                del self.pending[job.user]
            self._cancel(job, now, "shed_late")

    # ------------------------------------------------------------------ scaling

    def _waiting_total(self, now: float) -> int:
        return sum(r.n_waiting for r in self.replicas if not r.removed and r.ready)

    def _tick(self, now: float) -> None:
        assert self.autoscaler is not None
        target = self.autoscaler.step(now, self._waiting_total(now))
        live = [r for r in self.replicas if not r.removed and not r.draining]
        for _ in range(target - len(live)):
            self._add_replica(now, now + self.config.pod_start_s)
        if target < len(live):
            # The ReplicaSet removes pods not ready yet first, then the newest.
            order = sorted(live, key=lambda r: (r.ready_at <= now, -r.id))
            for r in order[: len(live) - target]:
                r.draining = True
                self._topology += 1
                if not r.outstanding:
                    self._remove(r)
        self._push(now + self.autoscaler.rule.polling_s, self.TICK, None)

    def _sample(self, now: float) -> None:
        b = self._bucket
        span = max(now - b["start"], 1e-9)
        lat = b["latencies"]
        answered = len(lat) + b["shed"] + b["timeouts"]
        self.timeline.append({
            "t_s": round(now),
            "users_online": round(online_users(self.schedule, now)) if self.schedule else None,
            "offered_rps": round(b["sent"] / span, 2),
            "replicas_ready": len(self._usable()),
            "replicas_set": (self.autoscaler.replicas if self.autoscaler
                             else self.config.replicas),
            "waiting": self._waiting_total(now),
            "p50_s": _round(percentile(lat, 50)),
            "p95_s": _round(percentile(lat, 95)),
            "shed_share": round(b["shed"] / answered, 4) if answered else 0.0,
        })
        self._bucket = self._new_bucket(now)
        self._push(now + self.config.sample_s, self.SAMPLE, None)

    # ------------------------------------------------------------------ run

    def run(self, arrivals: Sequence[tuple[float, int]], duration_s: float) -> dict[str, Any]:
        start = self.autoscaler.replicas if self.autoscaler else self.config.replicas
        for _ in range(start):
            self._add_replica(0.0, 0.0)
        if self.autoscaler is not None:
            self._push(self.autoscaler.rule.polling_s, self.TICK, None)
        self._push(self.config.sample_s, self.SAMPLE, None)
        i, n = 0, len(arrivals)
        while True:
            next_arrival = arrivals[i][0] if i < n else math.inf
            next_event = self.events[0][0] if self.events else math.inf
            now = min(next_arrival, next_event)
            if now > duration_s:
                break
            self._count_replicas(now)
            if next_arrival <= next_event:
                self._arrive(now, arrivals[i][1])
                i += 1
                continue
            _, _, kind, payload = heapq.heappop(self.events)
            if kind == self.FINISH:
                self._finish(now, *payload)
            elif kind == self.TIMEOUT:
                self._timeout(now, payload)
            elif kind == self.TICK:
                self._tick(now)
            elif kind == self.SAMPLE:
                self._sample(now)
            elif kind == self.READY:
                self._ready(payload)
        self._count_replicas(duration_s)
        return self.summary(duration_s)

    def _count_replicas(self, now: float) -> None:
        if now > self._last_t:
            self.replica_seconds += self._live * (now - self._last_t)
            self._last_t = now

    def summary(self, duration_s: float) -> dict[str, Any]:
        c = self.counts
        wanted = c["ok"] + c["shed_full"] + c["shed_late"] + c["timeout"]
        lat = self.latencies
        span = max(duration_s - self.config.warmup_s, 1e-9)
        busy = sum(r.busy_s for r in self.replicas)
        ready = len(self._usable())
        hits = c["prefix_hits"] + c["prefix_misses"]
        return {
            **c,
            "offered_rps": round(c["sent"] / span, 3),
            "completed_rps": round(c["ok"] / span, 3),
            "p50_s": _round(percentile(lat, 50)),
            "p95_s": _round(percentile(lat, 95)),
            "p99_s": _round(percentile(lat, 99)),
            "mean_s": _round(sum(lat) / len(lat)) if lat else None,
            "shed_rate": round((c["shed_full"] + c["shed_late"]) / wanted, 4) if wanted else 0.0,
            "timeout_rate": round(c["timeout"] / wanted, 4) if wanted else 0.0,
            "superseded_share": round(c["superseded"] / c["sent"], 4) if c["sent"] else 0.0,
            "prefix_hit_share": round(c["prefix_hits"] / hits, 4) if hits else None,
            "replicas_end": ready,
            "replicas_max": max((s["replicas_ready"] for s in self.timeline), default=ready),
            "mean_replicas": round(self.replica_seconds / max(duration_s, 1e-9), 2),
            "replica_utilisation": round(busy / max(self.replica_seconds, 1e-9), 3),
            "waiting_end": self._waiting_total(duration_s),
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def simulate(
    profile: ServiceProfile,
    config: SimConfig,
    arrivals: Sequence[tuple[float, int]],
    duration_s: float,
    seed: int = 0,
    schedule: Sequence[tuple[float, int]] | None = None,
) -> dict[str, Any]:
    """One run; its summary with the timeline (one row per ``config.sample_s``)."""
    sim = Simulation(profile, config, seed, schedule)
    summary = sim.run(arrivals, duration_s)
    return {**summary, "timeline": sim.timeline}


def meets(summary: dict[str, Any], p95_slo_s: float, max_shed: float) -> bool:
    """The service level: p95 within ``p95_slo_s`` and at most ``max_shed`` lost
    (shed or timed out)."""
    lost = summary["shed_rate"] + summary["timeout_rate"]
    return (summary["p95_s"] is not None and summary["p95_s"] <= p95_slo_s
            and lost <= max_shed)


def replicas_needed(
    profile: ServiceProfile,
    users: int,
    model: UserModel,
    *,
    p95_slo_s: float,
    max_shed: float = 0.01,
    router: str = "global",
    duration_s: float = 600.0,
    warmup_s: float = 120.0,
    seed: int = 0,
    limit: int = 400,
    base: SimConfig | None = None,
) -> dict[str, Any]:
    """The fewest fixed replicas that hold ``users`` steadily within the service level,
    by simulation (bracketed from the utilisation bound, then bisected)."""
    arrivals = typing_arrivals([(0, users)], model, duration_s, seed)
    base = base or SimConfig()
    rate = len([a for a in arrivals if a[0] >= warmup_s]) / (duration_s - warmup_s)
    bound = max(1, math.ceil(rate * profile.mean_solo_s / profile.gain[-1]))
    tried: dict[int, dict[str, Any]] = {}

    def run(n: int) -> bool:
        if n not in tried:
            cfg = SimConfig(**{**base.__dict__, "replicas": n, "autoscale": None,
                               "router": router, "warmup_s": warmup_s,
                               "sample_s": duration_s})
            tried[n] = simulate(profile, cfg, arrivals, duration_s, seed)
        return meets(tried[n], p95_slo_s, max_shed)

    # Bracket the answer: ``high`` meets the level, ``low`` does not (0: nothing tried
    # below). The bound is a first guess only: superseded requests take load away.
    if run(bound):
        low, high = 0, bound
        while high > 1:
            n = high - max(1, math.ceil(high * 0.25))
            if not run(n):
                low = n
                break
            high = n
    else:
        low, high = bound, bound
        while not run(high):
            if high >= limit:
                return {"replicas": None, "utilisation_bound": bound,
                        "offered_rps": round(rate, 2), "tried": _tried(tried),
                        "note": f"not met with {limit} replicas"}
            low, high = high, min(limit, high + max(1, math.ceil(high * 0.25)))
    while high - low > 1:
        mid = (low + high) // 2
        if run(mid):
            high = mid
        else:
            low = mid
    return {"replicas": high, "utilisation_bound": bound, "offered_rps": round(rate, 2),
            "at_needed": {k: v for k, v in tried[high].items() if k != "timeline"},
            "tried": _tried(tried)}


def _tried(tried: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"replicas": n, "p50_s": s["p50_s"], "p95_s": s["p95_s"],
             "shed_rate": s["shed_rate"], "timeout_rate": s["timeout_rate"],
             "utilisation": s["replica_utilisation"]} for n, s in sorted(tried.items())]
