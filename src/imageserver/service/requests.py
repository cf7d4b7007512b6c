"""Wire JSON → frozen, validated requests: the only module that knows the legacy field names.

Legacy defaults and clamps are kept (legacy-server.md §2): ``frame`` ≤ 0 → 1, ``xsize`` < 8
→ 8 (so a jpeg without ``xsize`` is 8 px wide, as before), zoom rounded to 0.1 and ≤ 1 → 1
with segcol = segrow = 0, ``labelHeight`` < 0 or above the limit → 0 (no banner). What the
legacy server silently read as 0 is now refused: a number sent as a string, a real where an
integer belongs (integral reals such as 512.0 are fine), ``true``, ``null``. Out-of-range
sizes and zooms are refused instead of producing a blank image, and so are NaN, ±Infinity,
lone surrogates, duplicate keys and nesting deeper than 64, so every accepted job can be
echoed back as valid JSON. ``index`` (autoindexing, legacy §2.5) keeps its legacy fields and
gains ``files`` and ``keep``; ``cancel`` stops the caller's index job of a ``tag``; ``job``
reads how the ESAF's index job of a ``tag`` stands.

Added to the legacy set (docs/http-api.md): jpeg's ``format`` and ``levels``, and the
``list`` and ``latest`` requests on a directory.

The session token (``pid``) never appears in an error text or a repr; logs use
``token_hash(pid)``. It does appear in a successful reply's job echo: the client sent it and
the web tier expects its whole request back (legacy §1.4), and that reply goes only to the
sender.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from imageserver.config import DEFAULT_LIMITS, LimitSettings
from imageserver.errors import RequestError
from imageserver.imaging.colormaps import COLORMAPS
from imageserver.imaging.geometry import MAX_SEGMENT, MIN_SIZE_PX
from imageserver.imaging.jpeg_options import JPEG_CHROMA

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_NESTING = 64
MAX_TYPE_LENGTH = 64
MIN_XSIZE_PX = MIN_SIZE_PX
SPOTS_DEFAULT_XSIZE_PX = 384
IMAGE_FORMATS = ("jpeg", "png", "raw")
"""A jpeg request's ``format``: the encoded image, or the reduced view's values and flags."""
LEVEL_MODES = ("legacy", "percentile")
"""A jpeg request's ``levels``: how automatic levels are chosen (`imaging.contrast`)."""
OBSOLETE_TYPES = frozenset(
    {"rsync_host_test", "rsync_connection_test", "local_dir_stats", "rsync_transfer"}
)


def token_hash(pid: str) -> str:
    """A short, stable stand-in for a session token in logs and error texts (bug S4 fixed)."""
    return hashlib.sha256(pid.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True, kw_only=True)
class BaseRequest:
    """Fields every request has. ``job`` is the client's JSON object, kept for the echo."""

    pid: str = field(repr=False)
    esaf: int = 0
    tag: str | None = None
    job: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    @property
    def session_hash(self) -> str:
        return token_hash(self.pid)


@dataclass(frozen=True, kw_only=True)
class JpegRequest(BaseRequest):
    """A view of one frame. Empty ``fn`` asks for the blank image (legacy behaviour)."""

    fn: str = ""
    frame: int = 1
    xsize: int = MIN_XSIZE_PX
    ysize: int | None = None
    zoom: float = 1.0
    segcol: float = 0.0
    segrow: float = 0.0
    contrast: int = 0
    wval: int = 0
    label: str = ""
    label_height: int = 0
    quality: int = 90
    colormap: str = "grey"
    chroma: str = "420"
    image_format: str = "jpeg"
    """The wire's ``format``: one of `IMAGE_FORMATS`."""
    levels: str = "legacy"


@dataclass(frozen=True, kw_only=True)
class SpotsRequest(BaseRequest):
    fn: str
    frame: int = 1
    xsize: int = SPOTS_DEFAULT_XSIZE_PX


@dataclass(frozen=True, kw_only=True)
class MetaRequest(BaseRequest):
    fn: str
    frame: int = 1


@dataclass(frozen=True, kw_only=True)
class WhoamiRequest(BaseRequest):
    """Who the session is: answered by the manager after the session check."""


@dataclass(frozen=True, kw_only=True)
class ListRequest(BaseRequest):
    """The datasets and subdirectories of ``dir``, read by the user's worker."""

    dir: str


@dataclass(frozen=True, kw_only=True)
class LatestRequest(BaseRequest):
    """The most recently written dataset of ``dir`` and its newest frame."""

    dir: str


MAX_INDEX_FILES = 10000
ANALYSIS_ALGORITHMS = ("dispersion_extended", "dispersion")


@dataclass(frozen=True, kw_only=True)
class AnalysisRequest(BaseRequest):
    """DIALS's spot finding and per-image numbers of one frame (``algorithm`` and the
    resolution range as DIALS's options; the ice-ring filter on by default)."""

    fn: str
    frame: int = 1
    d_min: float | None = None
    d_max: float | None = None
    algorithm: str = "dispersion_extended"
    filter_ice: bool = True


@dataclass(frozen=True, kw_only=True)
class IndexRequest(BaseRequest):
    """Autoindexing of ``fn1`` (frames ``frame1``–``frame2`` of a master; 0: all), or of
    ``fn1`` and ``fn2``, or of ``files``; progress PUBLISHed when the three progress fields
    name a channel, an allowed host and a port."""

    fn1: str = ""
    fn2: str = ""
    frame1: int = 0
    frame2: int = 0
    files: tuple[str, ...] = ()
    keep: bool = False
    progress_publisher: str = ""
    progress_address: str = ""
    progress_port: int = 0

    @property
    def inputs(self) -> tuple[str, ...]:
        """The files to index, each once, in the order given."""
        named = self.files or (self.fn1, self.fn2)
        return tuple(dict.fromkeys(name for name in named if name))

    @property
    def progress_tag(self) -> str:
        return self.tag if self.tag is not None else "Tag_Not_Found"


@dataclass(frozen=True, kw_only=True)
class CancelRequest(BaseRequest):
    """Stop the caller's index job with this ``tag`` (running or waiting)."""


@dataclass(frozen=True, kw_only=True)
class JobRequest(BaseRequest):
    """How the index job ``tag`` of this ESAF stands (any member's), from its record."""


@dataclass(frozen=True, kw_only=True)
class ObsoleteRequest(BaseRequest):
    """One of the four rsync-era types; its handler answers "Obsolete job type '<t>'"."""

    type_name: str


Request = (
    JpegRequest
    | SpotsRequest
    | MetaRequest
    | ListRequest
    | LatestRequest
    | WhoamiRequest
    | IndexRequest
    | CancelRequest
    | JobRequest
    | AnalysisRequest
    | ObsoleteRequest
)


def parse_request(payload: bytes, limits: LimitSettings | None = None) -> Request:
    """The one parser of request payloads; RequestError with a readable reason otherwise."""
    limits = limits or DEFAULT_LIMITS
    job = _decode(payload, limits)
    reader = _FieldReader(job, limits)
    pid = job.get("pid")
    if not isinstance(pid, str) or not pid:
        raise RequestError("request does not contain pid")
    if len(pid) > limits.max_string_length:
        raise RequestError(f"field 'pid' is longer than {limits.max_string_length} characters")
    esaf = reader.integer("esaf", 0)
    if esaf < 0:
        raise RequestError(f"field 'esaf' must be 0 (no ESAF) or a positive number, not {esaf}")
    type_name = _type_name(job)
    common: dict[str, Any] = {
        "pid": pid,
        "esaf": esaf,
        "tag": reader.optional_string("tag"),
        "job": MappingProxyType(job),
    }
    kind = type_name.lower()
    if kind in OBSOLETE_TYPES:
        return ObsoleteRequest(type_name=type_name, **common)
    build = _BUILDERS.get(kind)
    if build is None:
        raise RequestError(f"Unknown job type '{type_name}'")
    return build(reader, common)


def echo_job(request: BaseRequest, **additions: Any) -> bytes:
    """The client's job plus the server's additions, compact with sorted keys (as jansson).

    Reals are written in Python's shortest round-trip form (``0.1``), not jansson's ``%.17g``
    (``0.10000000000000001``); both parse to the same double.
    """
    job = dict(request.job)
    job.update(additions)
    text = json.dumps(
        job, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


# -- type-specific builders ------------------------------------------------------------------


def _build_jpeg(reader: _FieldReader, common: dict[str, Any]) -> JpegRequest:
    limits = reader.limits
    zoom, segcol, segrow = _view_window(reader)
    label_height = reader.integer("labelHeight", 0)
    if label_height < 0 or label_height > limits.max_label_height_px:
        label_height = 0  # legacy: above 64 means no banner, not an error
    quality = reader.integer("quality", 90)
    if not 1 <= quality <= 100:
        raise RequestError(f"field 'quality' must be from 1 to 100, not {quality}")
    colormap = reader.string("colormap", "grey")
    if colormap not in COLORMAPS:
        known = ", ".join(sorted(COLORMAPS))
        raise RequestError(f"unknown colormap {colormap!r}; known colormaps: {known}")
    chroma = reader.string("chroma", "420")
    if chroma not in JPEG_CHROMA:
        choices = ", ".join(JPEG_CHROMA)
        raise RequestError(f"field 'chroma' must be one of {choices}, not {chroma!r}")
    return JpegRequest(
        image_format=_choice(reader, "format", IMAGE_FORMATS),
        levels=_choice(reader, "levels", LEVEL_MODES),
        fn=reader.path("fn"),
        frame=_frame(reader),
        xsize=_size(reader, "xsize", MIN_XSIZE_PX),
        ysize=_ysize(reader),
        zoom=zoom,
        segcol=segcol,
        segrow=segrow,
        contrast=reader.integer("contrast", 0),
        wval=reader.integer("wval", 0),
        label=reader.string("label", ""),
        label_height=label_height,
        quality=quality,
        colormap=colormap,
        chroma=chroma,
        **common,
    )


def _build_spots(reader: _FieldReader, common: dict[str, Any]) -> SpotsRequest:
    return SpotsRequest(
        fn=_required_path(reader, "spots"),
        frame=_frame(reader),
        xsize=_size(reader, "xsize", SPOTS_DEFAULT_XSIZE_PX),
        **common,
    )


def _build_meta(reader: _FieldReader, common: dict[str, Any]) -> MetaRequest:
    return MetaRequest(fn=_required_path(reader, "meta"), frame=_frame(reader), **common)


def _build_whoami(_reader: _FieldReader, common: dict[str, Any]) -> WhoamiRequest:
    return WhoamiRequest(**common)


def _build_list(reader: _FieldReader, common: dict[str, Any]) -> ListRequest:
    return ListRequest(dir=_required_dir(reader, "list"), **common)


def _build_latest(reader: _FieldReader, common: dict[str, Any]) -> LatestRequest:
    return LatestRequest(dir=_required_dir(reader, "latest"), **common)


def _build_index(reader: _FieldReader, common: dict[str, Any]) -> IndexRequest:
    files = reader.path_list("files")
    fn1 = reader.path("fn1")
    if not fn1 and not files:
        raise RequestError("Missing image file (fn1 or files) for an index request")
    frame1, frame2 = reader.integer("frame1", 0), reader.integer("frame2", 0)
    if frame1 < 0 or frame2 < 0 or (frame1 and frame2 and frame2 < frame1):
        raise RequestError(f"frames {frame1}–{frame2} are not a range of frames")
    port = reader.integer("progressPort", 0)
    if not 0 <= port <= 65535:
        raise RequestError(f"field 'progressPort' must be a port number, not {port}")
    return IndexRequest(
        fn1=fn1,
        fn2=reader.path("fn2"),
        frame1=frame1,
        frame2=frame2,
        files=files,
        keep=reader.boolean("keep", False),
        progress_publisher=reader.string("progressPublisher", ""),
        progress_address=reader.string("progressAddress", ""),
        progress_port=port,
        **common,
    )


def _build_analysis(reader: _FieldReader, common: dict[str, Any]) -> AnalysisRequest:
    d_min, d_max = reader.optional_positive("d_min"), reader.optional_positive("d_max")
    if d_min is not None and d_max is not None and d_min >= d_max:
        raise RequestError(f"d_min {d_min:g} Å must be below d_max {d_max:g} Å")
    algorithm = reader.string("algorithm", "dispersion_extended")
    if algorithm not in ANALYSIS_ALGORITHMS:
        known = " or ".join(ANALYSIS_ALGORITHMS)
        raise RequestError(f"field 'algorithm' must be {known}, not {algorithm!r}")
    return AnalysisRequest(
        fn=_required_path(reader, "analysis"),
        frame=_frame(reader),
        d_min=d_min,
        d_max=d_max,
        algorithm=algorithm,
        filter_ice=reader.boolean("filter_ice", True),
        **common,
    )


def _build_cancel(reader: _FieldReader, common: dict[str, Any]) -> CancelRequest:
    if not common.get("tag"):
        raise RequestError("Missing tag for a cancel request: it names the job to stop")
    return CancelRequest(**common)


def _build_job(reader: _FieldReader, common: dict[str, Any]) -> JobRequest:
    if not common.get("tag"):
        raise RequestError("Missing tag for a job request: it names the index job")
    return JobRequest(**common)


_BUILDERS: dict[str, Callable[[_FieldReader, dict[str, Any]], Request]] = {
    "jpeg": _build_jpeg,
    "spots": _build_spots,
    "meta": _build_meta,
    "whoami": _build_whoami,
    "list": _build_list,
    "latest": _build_latest,
    "index": _build_index,
    "cancel": _build_cancel,
    "job": _build_job,
    "analysis": _build_analysis,
}


def _required_path(reader: _FieldReader, kind: str) -> str:
    fn = reader.path("fn")
    if not fn:
        article = "an" if kind[0] in "aeiou" else "a"
        raise RequestError(f"Missing filename (fn) for {article} {kind} request")
    return fn


def _required_dir(reader: _FieldReader, kind: str) -> str:
    directory = reader.path("dir")
    if not directory:
        raise RequestError(f"Missing directory (dir) for a {kind} request")
    return directory


def _choice(reader: _FieldReader, name: str, choices: tuple[str, ...]) -> str:
    """A string field with a fixed set of values; the first is the default."""
    value = reader.string(name, choices[0])
    if value not in choices:
        raise RequestError(f"field '{name}' must be one of {', '.join(choices)}, not {value!r}")
    return value


def _frame(reader: _FieldReader) -> int:
    return max(reader.integer("frame", 1), 1)


def _size(reader: _FieldReader, name: str, default: int) -> int:
    size = reader.integer(name, default)
    if size > reader.limits.max_xsize_px:
        raise RequestError(
            f"field '{name}' is {size}, above the limit of {reader.limits.max_xsize_px} pixels"
        )
    return max(size, MIN_XSIZE_PX)


def _ysize(reader: _FieldReader) -> int | None:
    """Legacy clients never had ysize (the server ignored it), so ≤ 0 means "keep the aspect"."""
    if reader.integer("ysize", 0) <= 0:
        return None
    return _size(reader, "ysize", 0)


def _view_window(reader: _FieldReader) -> tuple[float, float, float]:
    """zoom rounded to 0.1 (``floor(10·z + 0.5) / 10``); at zoom 1 the segment is (0, 0)."""
    max_zoom = reader.limits.max_zoom
    zoom = reader.number("zoom", 1.0)
    segcol = reader.number("segcol", 0.0)
    segrow = reader.number("segrow", 0.0)
    if zoom > max_zoom + 1.0:  # checked before rounding, which would overflow on 1e308
        raise RequestError(f"field 'zoom' is {zoom:g}, above the limit of {max_zoom:g}")
    zoom = math.floor(10.0 * zoom + 0.5) / 10.0 if zoom > 1.0 else 1.0
    if zoom > max_zoom:
        raise RequestError(f"field 'zoom' is {zoom:g}, above the limit of {max_zoom:g}")
    if zoom <= 1.0:
        return 1.0, 0.0, 0.0
    for name, value in (("segcol", segcol), ("segrow", segrow)):
        if abs(value) > MAX_SEGMENT:
            raise RequestError(
                f"field '{name}' is {value:g}, more than {MAX_SEGMENT:g} segments off the image"
            )
    return zoom, segcol, segrow


def _type_name(job: dict[str, Any]) -> str:
    value = job.get("type")
    if value is None:
        raise RequestError("No type parameter in job")
    if not isinstance(value, str):
        raise RequestError(f"field 'type' must be a string, not {_json_type(value)}")
    if len(value) > MAX_TYPE_LENGTH:
        raise RequestError(f"Unknown job type '{value[:MAX_TYPE_LENGTH]}…'")
    return value


# -- field reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _FieldReader:
    """Reads one typed field of the job at a time, naming the field in every refusal."""

    job: dict[str, Any]
    limits: LimitSettings

    def integer(self, name: str, default: int) -> int:
        """A JSON integer or integral real (512.0) within int64; nothing else."""
        value = self.job.get(name, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"field '{name}' must be an integer, not {_json_type(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise RequestError(f"field '{name}' is out of range (it must fit in 64 bits)")
        return value

    def number(self, name: str, default: float) -> float:
        value = self.job.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(f"field '{name}' must be a number, not {_json_type(value)}")
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise RequestError(f"field '{name}' is out of range (it must fit in 64 bits)")
        return float(value)

    def string(self, name: str, default: str) -> str:
        value = self.job.get(name, default)
        if not isinstance(value, str):
            raise RequestError(f"field '{name}' must be a string, not {_json_type(value)}")
        if len(value) > self.limits.max_string_length:
            raise RequestError(
                f"field '{name}' is {len(value)} characters long,"
                f" above the limit of {self.limits.max_string_length}"
            )
        return value

    def optional_string(self, name: str) -> str | None:
        return self.string(name, "") if name in self.job else None

    def path(self, name: str) -> str:
        value = self.string(name, "")
        if "\x00" in value:
            raise RequestError(f"field '{name}' contains a NUL character")
        return value

    def path_list(self, name: str) -> tuple[str, ...]:
        """An array of non-empty path strings (at most `MAX_INDEX_FILES`)."""
        value = self.job.get(name, [])
        if not isinstance(value, list):
            raise RequestError(f"field '{name}' must be an array of paths, not {_json_type(value)}")
        if len(value) > MAX_INDEX_FILES:
            raise RequestError(f"field '{name}' lists more than {MAX_INDEX_FILES} files")
        paths = []
        for item in value:
            reader = _FieldReader({name: item}, self.limits)
            path = reader.path(name)
            if not path:
                raise RequestError(f"field '{name}' holds an empty path")
            paths.append(path)
        return tuple(paths)

    def optional_positive(self, name: str) -> float | None:
        """A positive finite number, or None when the field is absent or null."""
        if self.job.get(name) is None:
            return None
        value = self.number(name, 0.0)
        if not 0 < value < math.inf:
            raise RequestError(f"field '{name}' must be a positive number, not {value:g}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.job.get(name, default)
        if not isinstance(value, bool):
            raise RequestError(f"field '{name}' must be true or false, not {_json_type(value)}")
        return value


def _json_type(value: Any) -> str:
    """What the client sent, in JSON words, for error texts."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return f"a non-integral number ({value:g})"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- JSON decoding -----------------------------------------------------------------------------


def _decode(payload: bytes, limits: LimitSettings) -> dict[str, Any]:
    if len(payload) > limits.max_request_bytes:
        raise RequestError(
            f"request is {len(payload)} bytes, above the limit of {limits.max_request_bytes}"
        )
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"Failed to parse request: invalid UTF-8 at byte {exc.start}: {exc.reason}"
        ) from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"Failed to parse request: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise RequestError("Failed to parse request: JSON nested too deeply") from None
    except RequestError:
        raise
    except ValueError as exc:  # e.g. an integer with more than 4300 digits
        raise RequestError(f"Failed to parse request: {exc}") from None
    if not isinstance(value, dict):
        raise RequestError(f"request must be a JSON object, not {_json_type(value)}")
    _check_echoable(value)
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two values for one key could let two readers see two requests; refuse them."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RequestError(f"Failed to parse request: duplicate key {key[:100]!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> float:
    raise RequestError(f"Failed to parse request: {name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"Failed to parse request: number {text[:40]} is out of range")
    return value


def _check_echoable(job: dict[str, Any]) -> None:
    """Refuse what could not be written back as JSON: deep nesting and lone surrogates."""
    stack: list[tuple[Any, int]] = [(job, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise RequestError(f"Failed to parse request: nested deeper than {MAX_NESTING}")
        if isinstance(value, dict):
            stack.extend((key, depth) for key in value)
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(
                    "Failed to parse request: a \\u escape is a lone surrogate, not a character"
                ) from None
