"""Every Prometheus metric of the service, and the small functions the rest of the code calls.

Each process role (``broker``, ``manager``, ``web``) has a registry of its own, exposed over
HTTP by `start_metrics_server` on its ``[metrics]`` address, so a scrape of one role shows
only what that role measures (plus its process's CPU and memory). Workers expose nothing:
their stage times travel to the manager with each reply (`stage_times`). docs/operations.md
says what each metric means; etc/grafana-imageserver.json draws them.

Labels come only from bounded sets: request types, error codes and cache sources outside
the known ones are counted as "other", so a client or a worker cannot grow the label space.
"""

from __future__ import annotations

import contextlib
import logging

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from imageserver.errors import ImageServerError
from imageserver.stage_times import STAGES, StageTimes

log = logging.getLogger(__name__)

ROLES = ("broker", "manager", "web")
REGISTRIES = {role: CollectorRegistry() for role in ROLES}
for _registry in REGISTRIES.values():
    ProcessCollector(registry=_registry)
    PlatformCollector(registry=_registry)

REQUEST_TYPES = frozenset(
    {"jpeg", "spots", "index", "meta", "analysis", "list", "latest", "whoami", "cancel", "job"}
)
OTHER = "other"
OK = "ok"
CHAIN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
TIER_OF_SOURCE = {
    "image": "memory",
    "memory": "memory",
    "shared": "redis",
    "frame": "computed",
    "file": "computed",
}
"""The cache tier that answered, by `cache.renderer.SOURCES`: the encoded image or reduced
view in the worker's memory, the reduced view in the ESAF's Redis, or computed (from a
frame held in memory, or decoded from the file)."""


def _error_codes() -> frozenset[str]:
    codes, classes = set(), [ImageServerError]
    while classes:
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    return frozenset(codes)


OUTCOMES = _error_codes() | {OK}


def _requests(role: str) -> Counter:
    return Counter(
        "imageserver_requests",
        "Requests answered, by type and outcome (ok or the error code)",
        ["component", "type", "outcome"],
        registry=REGISTRIES[role],
    )


def _request_seconds(role: str, what: str) -> Histogram:
    return Histogram(
        "imageserver_request_seconds",
        what,
        ["component", "type"],
        buckets=CHAIN_BUCKETS_S,
        registry=REGISTRIES[role],
    )


_REQUESTS = {role: _requests(role) for role in ROLES}
_REQUEST_SECONDS = {
    "broker": _request_seconds("broker", "Broker: request received to reply sent"),
    "manager": _request_seconds("manager", "Manager: request received to reply sent"),
    "web": _request_seconds("web", "Gateway: wait for the chain's reply"),
}

# -- manager ---------------------------------------------------------------------------------

_MANAGER = REGISTRIES["manager"]
STAGE_SECONDS = Histogram(
    "imageserver_stage_seconds",
    "Worker time per render stage (decode, reduce, contrast, encode), reported with replies",
    ["stage"],
    buckets=STAGE_BUCKETS_S,
    registry=_MANAGER,
)
CACHE_ANSWERS = Counter(
    "imageserver_cache_answers",
    "Worker answers by cache source and tier (memory, redis, computed)",
    ["source", "tier"],
    registry=_MANAGER,
)
WORKERS = Gauge(
    "imageserver_workers", "Live worker processes (draining ones included)", registry=_MANAGER
)
WORKERS_STARTED = Counter(
    "imageserver_workers_started", "Worker processes asked of the zygote", registry=_MANAGER
)
WORKERS_RETIRED = Counter(
    "imageserver_workers_retired",
    "Workers forgotten: idle, evicted, exited, crashed or could not start",
    registry=_MANAGER,
)
PENDING_REQUESTS = Gauge(
    "imageserver_pending_requests",
    "Requests received by the manager and not yet answered",
    registry=_MANAGER,
)
INDEX_JOBS_WAITING = Gauge(
    "imageserver_index_jobs_waiting",
    "Index jobs queued at the manager for a free slot",
    registry=_MANAGER,
)
REDIS_ERRORS = Counter(
    "imageserver_redis_errors",
    "Redis commands that failed in the manager, by store: session (the web tier's session"
    " Redis), cache (provisioning the shared cache's per-ESAF users)",
    ["store"],
    registry=_MANAGER,
)

# -- gateway ---------------------------------------------------------------------------------

_WEB = REGISTRIES["web"]
HTTP_REQUESTS = Counter(
    "imageserver_http_requests",
    "HTTP requests answered by the gateway, by route and status",
    ["route", "status"],
    registry=_WEB,
)
HTTP_SECONDS = Histogram(
    "imageserver_http_request_seconds",
    "HTTP request received to response sent, by route",
    ["route"],
    buckets=CHAIN_BUCKETS_S,
    registry=_WEB,
)

# -- broker ----------------------------------------------------------------------------------

_BROKER = REGISTRIES["broker"]
BROKER_QUEUE_DEPTH = Gauge(
    "imageserver_broker_queue_depth",
    "Requests held by the broker while every node is full",
    registry=_BROKER,
)
BROKER_NODES = Gauge(
    "imageserver_broker_nodes", "Nodes known to the broker, by health", ["state"], registry=_BROKER
)
BROKER_NODE_IN_FLIGHT = Gauge(
    "imageserver_broker_node_in_flight",
    "Requests sent to a node and not yet answered",
    ["node"],
    registry=_BROKER,
)
BROKER_RESENT = Counter(
    "imageserver_broker_resent", "Requests re-sent to another node", registry=_BROKER
)
BROKER_NODES_LOST = Counter(
    "imageserver_broker_nodes_lost", "Nodes declared lost (silent too long)", registry=_BROKER
)


def request_type(kind: str | None) -> str:
    """A request type as a label: a known one, "other", or "unparsed" (no type read)."""
    if not kind:
        return "unparsed"
    return kind if kind in REQUEST_TYPES else OTHER


def outcome(code: str | None) -> str:
    """The outcome label: "ok" for a success (None), else a code of errors.py, else "other"."""
    if code is None:
        return OK
    return code if code in OUTCOMES else OTHER


def count_request(role: str, kind: str | None, code: str | None, seconds: float) -> None:
    """One answered request of ``role``: its type, error code (None: ok) and latency."""
    labels = (role, request_type(kind), outcome(code))
    series = _request_series.get(labels)
    if series is None:  # label lookups cost ~3 µs each: once per (role, type, outcome)
        series = _request_series[labels] = (
            _REQUESTS[role].labels(*labels),
            _REQUEST_SECONDS[role].labels(*labels[:2]),
        )
    series[0].inc()
    series[1].observe(seconds)


_request_series: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


# -- what the manager calls ------------------------------------------------------------------


def manager_request(kind: str | None, code: str | None, seconds: float) -> None:
    """A request the manager answered: ``seconds`` from its receipt to the reply."""
    count_request("manager", kind, code, seconds)


_STAGE_SERIES = {stage: STAGE_SECONDS.labels(stage) for stage in STAGES}
_CACHE_SERIES = {
    source: CACHE_ANSWERS.labels(source, tier) for source, tier in TIER_OF_SOURCE.items()
}


def observe_stage_times(times: StageTimes) -> None:
    """A worker's reported stage times and cache source (already checked by `parse`)."""
    for stage, seconds in times.seconds.items():
        series = _STAGE_SERIES.get(stage)
        if series is not None:
            series.observe(seconds)
    answers = _CACHE_SERIES.get(times.source)
    if answers is not None:
        answers.inc()


def manager_state(*, workers: int, pending: int, index_waiting: int) -> None:
    """The manager's gauges, set from its loop."""
    WORKERS.set(workers)
    PENDING_REQUESTS.set(pending)
    INDEX_JOBS_WAITING.set(index_waiting)


def worker_started() -> None:
    WORKERS_STARTED.inc()


def worker_retired() -> None:
    WORKERS_RETIRED.inc()


def redis_error(store: str) -> None:
    """A Redis command of ``store`` failed where the error was caught ("session")."""
    REDIS_ERRORS.labels(store).inc()


# -- what the gateway calls ------------------------------------------------------------------


def gateway_chain_request(kind: str | None, code: str | None, seconds: float) -> None:
    """A wire request of the gateway: its wait for the chain's reply and the outcome."""
    count_request("web", kind, code, seconds)


def gateway_http_request(route: str, status: int, seconds: float) -> None:
    """An HTTP response: ``route`` is the route's template (bounded), never the raw path."""
    series = _http_series.get((route, status))
    if series is None:
        series = _http_series[route, status] = (
            HTTP_REQUESTS.labels(route, str(status)),
            HTTP_SECONDS.labels(route),
        )
    series[0].inc()
    series[1].observe(seconds)


_http_series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}


# -- what the broker calls -------------------------------------------------------------------


def broker_request(kind: str | None, code: str | None, seconds: float) -> None:
    """A request the broker answered (a node's reply, or its own busy/timeout), ``code``
    None for ok; ``seconds`` from the client's request received to the reply sent."""
    count_request("broker", kind, code, seconds)


def broker_queue_depth(n: int) -> None:
    """Requests the broker holds, waiting for a node with room."""
    BROKER_QUEUE_DEPTH.set(n)


def broker_nodes(healthy: int, total: int) -> None:
    """Nodes heard from within their timeout (healthy) and all the broker knows (total)."""
    BROKER_NODES.labels("healthy").set(healthy)
    BROKER_NODES.labels("total").set(total)


def broker_node_in_flight(node: str, n: int) -> None:
    """Requests the broker sent to ``node`` (its announced name) and not yet answered."""
    BROKER_NODE_IN_FLIGHT.labels(node).set(n)


def broker_node_removed(node: str) -> None:
    """Forget ``node``'s in-flight series (a node lost or gone for good), so a dashboard
    does not show a stale value for it."""
    with contextlib.suppress(KeyError):
        BROKER_NODE_IN_FLIGHT.remove(node)


def broker_resent() -> None:
    """One request re-sent to another node (its node was lost before answering)."""
    BROKER_RESENT.inc()


def broker_node_lost() -> None:
    """One node declared lost after ``node_timeout_s`` of silence."""
    BROKER_NODES_LOST.inc()


# -- exposition ------------------------------------------------------------------------------


def start_metrics_server(address: str, role: str) -> bool:
    """Serve ``role``'s metrics at http://``address``/metrics from a daemon thread.

    ``address`` is "host:port" ("[v6]:port" too), or "" for none. A port in use (or any
    other failure to listen) logs one warning and returns False: metrics never stop the
    service. True once it listens.
    """
    if role not in REGISTRIES:
        raise ValueError(f"unknown metrics role {role!r}; one of {', '.join(ROLES)}")
    if not address:
        return False
    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host.strip("[]"), registry=REGISTRIES[role])
    except (OSError, ValueError) as exc:
        log.warning("%s: metrics not served at %s: %s", role, address, exc)
        return False
    log.info("%s: metrics at http://%s/metrics", role, address)
    return True
