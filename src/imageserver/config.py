"""Settings: one frozen tree with built-in defaults, optionally read from a TOML file.

Every compile-time constant of the legacy server (endpoints, Redis addresses, key file,
ESAF rules, thread counts, limits) is a setting here. A file only needs the keys it changes;
an unknown key is an error naming it, so a typo never silently falls back to a default.
The file is ``load_settings(path)``'s argument, else ``$IMAGESERVER_CONFIG``, else none.
docs/configuration.md documents every key.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from imageserver.errors import ConfigError

S = TypeVar("S")
CONFIG_ENV = "IMAGESERVER_CONFIG"
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _require(is_ok: bool, section: str, key: str, problem: str) -> None:
    if not is_ok:
        raise ConfigError(f"[{section}] {key} {problem}")


def _default_threads() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ProxySettings:
    """Where the ZeroMQ proxy listens: web clients on the front, managers on the back."""

    SECTION: ClassVar[str] = "proxy"
    front_endpoint: str = "ipc://@imageserver-front"
    back_endpoint: str = "tcp://127.0.0.1:60202"

    def __post_init__(self) -> None:
        for key in ("front_endpoint", "back_endpoint"):
            value = getattr(self, key)
            _require(
                value.startswith(_ENDPOINT_SCHEMES),
                self.SECTION,
                key,
                f"must start with one of {', '.join(_ENDPOINT_SCHEMES)}, not {value!r}",
            )


@dataclass(frozen=True)
class BrokerSettings:
    """How the broker and the nodes keep each other alive and bound their queues.

    Both sides heartbeat every ``heartbeat_s``; the broker declares a node lost after
    ``node_timeout_s`` of silence and answers (or re-sends) its requests, so a client waits
    at most about that long for a node that died. A node re-joins a broker it has not heard
    from for ``2 × node_timeout_s``.
    """

    SECTION: ClassVar[str] = "broker"
    heartbeat_s: float = 0.5
    node_timeout_s: float = 1.5
    queue_limit: int = 256
    """Requests the broker holds while every node is full; beyond it the client gets busy."""
    queue_wait_s: float = 2.0
    """How long a request may wait at the broker for a node with room before busy."""
    node_capacity: int = 0
    """Requests a node accepts at once (it announces this; beyond it it answers busy);
    0: 8 per core, at least 32."""
    node_slots: int = 0
    """In-flight requests up to which a node keeps its (login, ESAF) affinity; 0: 2 per core."""
    node_name: str = ""
    """The name a node announces (logs, metrics); "": host name and process id."""

    def __post_init__(self) -> None:
        for key in ("heartbeat_s", "node_timeout_s", "queue_wait_s"):
            _require(getattr(self, key) > 0, self.SECTION, key, "must be > 0")
        _require(
            self.node_timeout_s >= 2 * self.heartbeat_s,
            self.SECTION,
            "node_timeout_s",
            "must be at least twice heartbeat_s (one lost heartbeat is not a lost node)",
        )
        _require(self.queue_limit >= 0, self.SECTION, "queue_limit", "must be ≥ 0")
        _require(self.node_capacity >= 0, self.SECTION, "node_capacity", "must be ≥ 0")
        _require(self.node_slots >= 0, self.SECTION, "node_slots", "must be ≥ 0")

    @property
    def capacity(self) -> int:
        return self.node_capacity or max(32, 8 * _default_threads())

    @property
    def slots(self) -> int:
        return min(self.node_slots or 2 * _default_threads(), self.capacity)


@dataclass(frozen=True)
class SessionSettings:
    """The web tier's Redis holding signed sessions, and the key that checks their signature."""

    SECTION: ClassVar[str] = "session"
    redis_url: str = "redis://127.0.0.1:6379/0"
    sentinels: str = ""
    """Sentinels naming the primary (``host:port,host:port``); "" uses ``redis_url``'s server.
    With sentinels, ``redis_url`` gives only the database, user name and password."""
    sentinel_service: str = "mymaster"
    """The primary's name in the sentinels' configuration."""
    sentinel_password: str = ""
    """The sentinels' own password, if they have one."""
    redis_timeout_s: float = 2.0
    public_key_path: Path = Path("/etc/imageserver/session-pubkey.pem")
    verified_signatures: int = 4096

    def __post_init__(self) -> None:
        _require(
            self.redis_url.startswith(_REDIS_SCHEMES),
            self.SECTION,
            "redis_url",
            f"must start with one of {', '.join(_REDIS_SCHEMES)}, not {self.redis_url!r}",
        )
        _check_sentinels(self)
        _require(self.redis_timeout_s > 0, self.SECTION, "redis_timeout_s", "must be > 0")
        _require(self.verified_signatures >= 0, self.SECTION, "verified_signatures", "must be ≥ 0")


@dataclass(frozen=True)
class IdentitySettings:
    """How a (user, ESAF) pair becomes a Unix uid, gid and home directory."""

    SECTION: ClassVar[str] = "identity"
    esaf_group_pattern: str = "e{esaf}"
    esaf_threshold: int = 40000

    def __post_init__(self) -> None:
        try:
            name = self.esaf_group_pattern.format(esaf=40001)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"[{self.SECTION}] esaf_group_pattern {self.esaf_group_pattern!r} is not a"
                f" valid pattern with one {{esaf}} field: {exc}"
            ) from None
        _require(
            "40001" in name,
            self.SECTION,
            "esaf_group_pattern",
            f"must contain {{esaf}}, not {self.esaf_group_pattern!r}",
        )
        _require(self.esaf_threshold >= 0, self.SECTION, "esaf_threshold", "must be ≥ 0")


@dataclass(frozen=True)
class WorkerSettings:
    """Per-identity worker processes and the time a request may take."""

    SECTION: ClassVar[str] = "workers"
    threads: int = field(default_factory=_default_threads)
    max_workers: int = 64
    idle_timeout_s: float = 300.0
    request_deadline_s: float = 30.0
    long_request_deadline_s: float = 600.0
    """For request types that run long by nature (autoindexing)."""
    auth_threads: int = 4
    memory_limit_bytes: int = -1
    """Ceiling of a worker's heap (RLIMIT_DATA); -1: the cache budget plus 2 GiB; 0: none."""
    failed_start_retry_s: float = 30.0
    """An identity whose worker could not start is answered with that error this long."""

    def __post_init__(self) -> None:
        for key in ("threads", "max_workers", "auth_threads"):
            _require(getattr(self, key) >= 1, self.SECTION, key, "must be ≥ 1")
        for key in ("idle_timeout_s", "request_deadline_s", "long_request_deadline_s"):
            _require(getattr(self, key) > 0, self.SECTION, key, "must be > 0")
        _require(
            self.failed_start_retry_s >= 0, self.SECTION, "failed_start_retry_s", "must be ≥ 0"
        )
        _require(
            self.memory_limit_bytes == -1
            or self.memory_limit_bytes == 0
            or self.memory_limit_bytes >= 256 << 20,
            self.SECTION,
            "memory_limit_bytes",
            "must be -1 (automatic), 0 (no limit) or at least 268435456 (256 MiB)",
        )


@dataclass(frozen=True)
class CacheSettings:
    """The per-worker memory cache and the Redis cache shared by the workers of an ESAF.

    ``redis_url`` is the manager's (administrative) connection: it provisions one Redis ACL
    user per ESAF group, and workers connect as that user, never with these credentials.
    """

    SECTION: ClassVar[str] = "cache"
    redis_url: str = "redis://127.0.0.1:6379/1"
    sentinels: str = ""
    """Sentinels naming the primary (``host:port,host:port``); "" uses ``redis_url``'s server.
    With sentinels, ``redis_url`` gives only the database, user name and password."""
    sentinel_service: str = "mymaster"
    """The primary's name in the sentinels' configuration."""
    sentinel_password: str = ""
    """The sentinels' own password, if they have one; workers are told it too (they ask the
    sentinels where the primary is), so it must not be the data nodes' password."""
    memory_budget_bytes: int = -1
    max_entry_fraction: float = 0.25
    ttl_s: int = 300
    redis_timeout_s: float = 0.25
    redis_retry_s: float = 2.0
    claim_s: float = 2.0
    key_prefix: str = "imageserver"
    require_isolation: bool = False

    def __post_init__(self) -> None:
        _require(
            self.redis_url == "" or self.redis_url.startswith(_REDIS_SCHEMES),
            self.SECTION,
            "redis_url",
            f"must start with one of {', '.join(_REDIS_SCHEMES)}, not {self.redis_url!r}",
        )
        _check_sentinels(self)
        _require(
            self.memory_budget_bytes >= -1,
            self.SECTION,
            "memory_budget_bytes",
            "must be ≥ 0, or -1 for the automatic budget",
        )
        _require(
            0 < self.max_entry_fraction <= 1,
            self.SECTION,
            "max_entry_fraction",
            "must be in (0, 1]",
        )
        _require(self.ttl_s >= 1, self.SECTION, "ttl_s", "must be ≥ 1")
        for key in ("redis_timeout_s", "redis_retry_s", "claim_s"):
            _require(getattr(self, key) > 0, self.SECTION, key, "must be > 0")
        _require(
            re.fullmatch(r"[A-Za-z0-9_-]+", self.key_prefix) is not None,
            self.SECTION,
            "key_prefix",
            f"must be letters, digits, '-' or '_', not {self.key_prefix!r}",
        )


@dataclass(frozen=True)
class LimitSettings:
    """Bounds on what one request may ask for; beyond them the request is refused."""

    SECTION: ClassVar[str] = "limits"
    max_xsize_px: int = 10000
    max_zoom: float = 64.0
    max_label_height_px: int = 64
    max_string_length: int = 4096
    max_request_bytes: int = 1 << 20
    max_decompressed_bytes: int = 512 << 20
    """The most bytes one read may hold decoded: a gz/bz2/xz file inflating to more, a plain
    file or an HDF5 chunk larger, is refused before it is held."""
    max_frame_pixels: int = 64 << 20
    """Width × height a header may declare (an Eiger2 16M frame is 18 M pixels)."""
    max_list_entries: int = 10000
    """Entries a directory listing reads; beyond them the listing says it is truncated."""

    def __post_init__(self) -> None:
        _require(self.max_list_entries >= 1, self.SECTION, "max_list_entries", "must be ≥ 1")
        _require(self.max_xsize_px >= 8, self.SECTION, "max_xsize_px", "must be ≥ 8")
        _require(self.max_zoom >= 1, self.SECTION, "max_zoom", "must be ≥ 1")
        _require(self.max_label_height_px >= 0, self.SECTION, "max_label_height_px", "must be ≥ 0")
        _require(self.max_string_length >= 1, self.SECTION, "max_string_length", "must be ≥ 1")
        _require(self.max_request_bytes >= 64, self.SECTION, "max_request_bytes", "must be ≥ 64")
        for key in ("max_decompressed_bytes", "max_frame_pixels"):
            _require(getattr(self, key) >= 1 << 16, self.SECTION, key, "must be ≥ 65536")


DEFAULT_LIMITS = LimitSettings()


@dataclass(frozen=True)
class WebSettings:
    """The HTTP gateway (`imageserver web`): a client of the proxy's front endpoint."""

    SECTION: ClassVar[str] = "web"
    listen: str = "127.0.0.1:8080"
    https: bool = False
    """Behind an https reverse proxy: session cookies are marked Secure."""
    session_concurrency: int = 8
    """Requests of one session in the chain at once; more wait their turn."""
    session_queue: int = 64
    """Requests of one session waiting for a turn; beyond it the answer is 503 busy."""
    request_timeout_s: float = 35.0
    """How long the gateway waits for the chain's reply (the chain's own deadline is shorter)."""
    index_timeout_s: float = 900.0
    """How long an index job started over HTTP may wait for its reply."""

    def __post_init__(self) -> None:
        host, _, port = self.listen.rpartition(":")
        _require(
            bool(host) and port.isdigit() and 0 < int(port) < 65536,
            self.SECTION,
            "listen",
            f"must be HOST:PORT, not {self.listen!r}",
        )
        for key in ("session_concurrency", "session_queue"):
            _require(getattr(self, key) >= 1, self.SECTION, key, "must be ≥ 1")
        for key in ("request_timeout_s", "index_timeout_s"):
            _require(getattr(self, key) > 0, self.SECTION, key, "must be > 0")


@dataclass(frozen=True)
class IndexSettings:
    """Autoindexing jobs (`index` requests): what runs, where, and how many at once."""

    SECTION: ClassVar[str] = "index"
    command: str = ""
    """The indexer, a command with RAPD's contract (``--json --json-fd J --progress-fd P
    [--detector D] FILES…``), split like a shell would; "" is the built-in DIALS pipeline."""
    scratch_root: str = "/tmp"
    """Where each job gets its own directory, made by and for the user (0700)."""
    keep_scratch: bool = False
    max_jobs: int = 2
    """Jobs running at once on this node; later ones wait in order."""
    progress_hosts: str = "127.0.0.1:6379,localhost:6379,[::1]:6379"
    """Redis servers a request may name for its progress messages (comma-separated
    ``host:port``, ``[v6 address]:port``, or a bare host for any of its ports); a request
    naming another gets no progress messages, never a connection elsewhere."""
    record_ttl_s: int = 86400
    """How long a job's record (state, progress, result) stays readable in the shared
    Redis after its last change."""

    def __post_init__(self) -> None:
        _require(self.max_jobs >= 1, self.SECTION, "max_jobs", "must be ≥ 1")
        _require(self.record_ttl_s >= 60, self.SECTION, "record_ttl_s", "must be ≥ 60")
        _require(
            self.scratch_root.startswith("/"), self.SECTION, "scratch_root", "must be absolute"
        )

    def allows_progress_to(self, host: str, port: int) -> bool:
        """Whether ``host``:``port`` is one of `progress_hosts` (a bare host: any port)."""
        for entry in (part.strip() for part in self.progress_hosts.split(",")):
            allowed_host, allowed_port = _host_and_port(entry)
            if allowed_host == host and allowed_port in (None, port):
                return True
        return False


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[v6 address]:port`` too) as pairs; ValueError naming the
    first entry that is not one."""
    addresses = []
    for entry in (part.strip() for part in text.split(",") if part.strip()):
        host, port = _host_and_port(entry)
        if not host or port is None or not 0 < port < 65536:
            raise ValueError(f"{entry!r} is not HOST:PORT")
        addresses.append((host, port))
    return tuple(addresses)


def _check_sentinels(section: SessionSettings | CacheSettings) -> None:
    """With sentinels, ``redis_url`` must be a TCP URL (its credentials and database hold on
    every data node) and the service must be named."""
    if not section.sentinels.strip():
        return
    try:
        parse_sentinels(section.sentinels)
    except ValueError as exc:
        raise ConfigError(
            f"[{section.SECTION}] sentinels must be HOST:PORT,HOST:PORT…: {exc}"
        ) from None
    _require(
        section.redis_url.startswith(("redis://", "rediss://")),
        section.SECTION,
        "redis_url",
        f"must be redis:// or rediss:// when sentinels are set, not {section.redis_url!r}",
    )
    _require(bool(section.sentinel_service), section.SECTION, "sentinel_service", "must be set")


def _host_and_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, ``[v6]``, a bare v6 address or a bare host."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    host, colon, port = entry.rpartition(":")
    if colon and ":" not in host and port.isdigit():
        return host, int(port)
    return entry, None


@dataclass(frozen=True)
class LiveSettings:
    """Live data in each worker: directories users follow are watched (inotify), a frame the
    detector writes there is reduced before anyone asks, and a viewed frame's neighbours are
    prepared (`service/live.py`)."""

    SECTION: ClassVar[str] = "live"
    watch: bool = True
    """Watch the directories a user's ``latest``, ``list`` or jpeg view names."""
    reduce_new_frames: bool = True
    """Reduce each new frame in a watched directory in the background (the newest first)."""
    prefetch: bool = True
    """After a view of frame N, prepare N+1 and N−1 with the same parameters."""
    max_watched_dirs: int = 8
    """Directories one worker watches at once; the least recently asked goes first."""
    watch_idle_s: float = 300.0
    """A watch no request named for this long is dropped."""
    view_xsize_px: int = 1024
    """The width a new frame is reduced to until a view in its directory asks another (the
    viewer's first request)."""
    max_frames_per_s: float = 10.0
    """New frames reduced per second at most, per watched directory: a faster detector's
    frames in between are skipped (the viewer follows at 2 per second)."""

    def __post_init__(self) -> None:
        _require(self.max_watched_dirs >= 1, self.SECTION, "max_watched_dirs", "must be ≥ 1")
        _require(self.watch_idle_s > 0, self.SECTION, "watch_idle_s", "must be > 0")
        _require(self.view_xsize_px >= 8, self.SECTION, "view_xsize_px", "must be ≥ 8")
        _require(self.max_frames_per_s > 0, self.SECTION, "max_frames_per_s", "must be > 0")


@dataclass(frozen=True)
class MetricsSettings:
    """Where each role serves its Prometheus metrics (``/metrics``); "" serves none. Keep
    these addresses off the public network: the gateway's are not on its HTTP port."""

    SECTION: ClassVar[str] = "metrics"
    broker: str = "127.0.0.1:9310"
    manager: str = "127.0.0.1:9311"
    web: str = "127.0.0.1:9312"

    def __post_init__(self) -> None:
        for key in ("broker", "manager", "web"):
            value = getattr(self, key)
            host, _, port = value.rpartition(":")
            _require(
                value == "" or (bool(host) and port.isdigit() and 0 < int(port) < 65536),
                self.SECTION,
                key,
                f'must be HOST:PORT, or "" for none, not {value!r}',
            )


@dataclass(frozen=True)
class LoggingSettings:
    SECTION: ClassVar[str] = "logging"
    level: str = "INFO"

    def __post_init__(self) -> None:
        _require(
            self.level.upper() in LOG_LEVELS,
            self.SECTION,
            "level",
            f"must be one of {', '.join(LOG_LEVELS)}, not {self.level!r}",
        )
        object.__setattr__(self, "level", self.level.upper())


@dataclass(frozen=True)
class Settings:
    """The whole configuration; ``Settings()`` is the built-in defaults."""

    proxy: ProxySettings = field(default_factory=ProxySettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    web: WebSettings = field(default_factory=WebSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    live: LiveSettings = field(default_factory=LiveSettings)


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path``, else from ``$IMAGESERVER_CONFIG``, else the built-in defaults.

    Relative paths inside the file are taken relative to the file's directory, never to the
    current directory (the legacy key file was CWD-relative, bug S8).
    """
    if path is None:
        from_env = os.environ.get(CONFIG_ENV, "")
        if not from_env:
            return Settings()
        path = Path(from_env)
    try:
        with open(path, "rb") as stream:
            table = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        settings = _build(Settings, table, "", Path(path).resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    assert isinstance(settings, Settings)
    return settings


def section_from_table(cls: type[S], table: dict[str, Any]) -> S:
    """One settings section from a plain table (JSON sent to another process), checked."""
    section = _build(cls, table, str(getattr(cls, "SECTION", "")), Path("."))
    assert isinstance(section, cls)
    return section


def _build(cls: type, table: dict[str, Any], where: str, base_dir: Path) -> Any:
    """One dataclass from one TOML table, checking every key's name and type."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{where}.{key}" if where else key
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            place = f"in [{where}]" if where else "at the top level"
            raise ConfigError(
                f"unknown key '{dotted}'{hint} (known keys {place}: {', '.join(known)})"
            )
        kwargs[key] = _convert(hints[key], value, dotted, base_dir)
    return cls(**kwargs)


def _convert(kind: Any, value: Any, dotted: str, base_dir: Path) -> Any:
    if is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"'{dotted}' must be a table ([{dotted}]), not {_toml_type(value)}")
        return _build(typing.cast(type, kind), value, dotted, base_dir)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is Path and isinstance(value, str):
        return base_dir / Path(value).expanduser()
    wanted = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path string",
    }[kind]
    raise ConfigError(f"'{dotted}' must be {wanted}, not {_toml_type(value)} ({value!r})")


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)
