"""Wire JSON → requests: legacy defaults and clamps, refusals with their texts, the job echo."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.config import LimitSettings
from imageserver.errors import RequestError
from imageserver.service.requests import (
    AnalysisRequest,
    CancelRequest,
    IndexRequest,
    JpegRequest,
    MetaRequest,
    ObsoleteRequest,
    SpotsRequest,
    echo_job,
    parse_request,
    token_hash,
)

PID = "0123456789abcdef0123456789abcdef"


def encode(job: dict[str, Any]) -> bytes:
    return json.dumps(job).encode()


def jpeg(**fields: Any) -> JpegRequest:
    request = parse_request(encode({"pid": PID, "type": "jpeg", **fields}))
    assert isinstance(request, JpegRequest)
    return request


def refusal(payload: bytes | dict[str, Any]) -> str:
    data = payload if isinstance(payload, bytes) else encode(payload)
    with pytest.raises(RequestError) as caught:
        parse_request(data)
    return str(caught.value)


# -- common fields -----------------------------------------------------------------------------


def test_a_full_jpeg_request_keeps_every_field() -> None:
    request = jpeg(
        fn="/data/x_master.h5",
        frame=3,
        xsize=512,
        ysize=600,
        zoom=2.0,
        segcol=1.5,
        segrow=0.25,
        contrast=90,
        wval=2,
        label="hello",
        labelHeight=16,
        quality=75,
        colormap="heat",
        chroma="444",
        esaf=41234,
        tag="tile-7",
    )
    assert (request.fn, request.frame, request.xsize, request.ysize) == (
        "/data/x_master.h5",
        3,
        512,
        600,
    )
    assert (request.zoom, request.segcol, request.segrow) == (2.0, 1.5, 0.25)
    assert (request.contrast, request.wval, request.label, request.label_height) == (
        90,
        2,
        "hello",
        16,
    )
    assert (request.quality, request.colormap, request.chroma) == (75, "heat", "444")
    assert (request.pid, request.esaf, request.tag) == (PID, 41234, "tile-7")


def test_defaults_are_the_legacy_ones() -> None:
    request = jpeg()
    assert request == JpegRequest(pid=PID)
    assert (request.fn, request.frame, request.xsize, request.ysize) == ("", 1, 8, None)
    assert (request.zoom, request.segcol, request.segrow) == (1.0, 0.0, 0.0)
    assert (request.contrast, request.wval, request.label_height) == (0, 0, 0)
    assert (request.quality, request.colormap, request.esaf, request.tag) == (90, "grey", 0, None)
    assert request.chroma == "420"


@pytest.mark.parametrize("pid", [None, 12, "", ["a"], {"a": 1}, True])
def test_pid_missing_or_not_a_string(pid: Any) -> None:
    job = {"type": "jpeg"} if pid is None else {"pid": pid, "type": "jpeg"}
    assert refusal(job) == "request does not contain pid"


def test_esaf_integral_real_is_accepted() -> None:
    assert jpeg(esaf=41234.0).esaf == 41234


@pytest.mark.parametrize(
    ("esaf", "received"),
    [
        ("41234", "a string"),
        (1.5, "a non-integral number (1.5)"),
        (None, "null"),
        (True, "a boolean"),
        ([1], "an array"),
    ],
)
def test_esaf_of_another_type_is_refused_not_read_as_zero(esaf: Any, received: str) -> None:
    assert refusal({"pid": PID, "type": "jpeg", "esaf": esaf}) == (
        f"field 'esaf' must be an integer, not {received}"
    )


def test_negative_esaf_is_refused() -> None:
    assert refusal({"pid": PID, "type": "jpeg", "esaf": -3}) == (
        "field 'esaf' must be 0 (no ESAF) or a positive number, not -3"
    )


@pytest.mark.parametrize("name", ["JPEG", "Jpeg", "jpeg"])
def test_type_is_case_insensitive(name: str) -> None:
    assert isinstance(parse_request(encode({"pid": PID, "type": name})), JpegRequest)


def test_type_missing_unknown_or_not_a_string() -> None:
    assert refusal({"pid": PID}) == "No type parameter in job"
    assert refusal({"pid": PID, "type": "Thumbnail"}) == "Unknown job type 'Thumbnail'"
    assert refusal({"pid": PID, "type": 3}) == "field 'type' must be a string, not an integer"
    assert refusal({"pid": PID, "type": "index"}) == (
        "Missing image file (fn1 or files) for an index request"
    )


def test_index_keeps_the_legacy_fields_and_takes_a_file_list() -> None:
    legacy = parse_request(
        encode(
            {
                "pid": PID,
                "type": "index",
                "fn1": "/d/x_master.h5",
                "fn2": "/d/x_master.h5",
                "frame1": 1,
                "frame2": 15,
                "tag": "run7",
                "progressPublisher": "progress",
                "progressAddress": "127.0.0.1",
                "progressPort": 6379,
            }
        )
    )
    assert isinstance(legacy, IndexRequest)
    assert legacy.inputs == ("/d/x_master.h5",)
    assert (legacy.frame1, legacy.frame2, legacy.progress_port) == (1, 15, 6379)
    assert legacy.progress_tag == "run7"
    files = parse_request(
        encode({"pid": PID, "type": "index", "files": ["/d/a_1.cbf", "/d/a_2.cbf"]})
    )
    assert isinstance(files, IndexRequest) and files.inputs == ("/d/a_1.cbf", "/d/a_2.cbf")
    assert files.progress_tag == "Tag_Not_Found"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"files": "/d/a.cbf"}, "field 'files' must be an array of paths, not a string"),
        ({"files": [""]}, "field 'files' holds an empty path"),
        ({"files": [3]}, "field 'files' must be a string, not an integer"),
        ({"fn1": "/a", "frame1": 5, "frame2": 2}, "frames 5–2 are not a range of frames"),
        (
            {"fn1": "/a", "progressPort": 70000},
            "field 'progressPort' must be a port number, not 70000",
        ),
        ({"fn1": "/a", "keep": 1}, "field 'keep' must be true or false, not an integer"),
    ],
)
def test_index_refusals(fields: dict[str, Any], message: str) -> None:
    assert refusal({"pid": PID, "type": "index", **fields}) == message


def test_cancel_names_a_tag() -> None:
    assert isinstance(
        parse_request(encode({"pid": PID, "type": "cancel", "tag": "t"})), CancelRequest
    )
    assert refusal({"pid": PID, "type": "cancel"}) == (
        "Missing tag for a cancel request: it names the job to stop"
    )


@pytest.mark.parametrize(
    "name", ["rsync_host_test", "RSYNC_CONNECTION_TEST", "local_dir_stats", "rsync_transfer"]
)
def test_obsolete_types_keep_their_spelling(name: str) -> None:
    request = parse_request(encode({"pid": PID, "type": name, "esaf": 7}))
    assert isinstance(request, ObsoleteRequest)
    assert (request.type_name, request.esaf) == (name, 7)


def test_tag_must_be_a_string() -> None:
    assert refusal({"pid": PID, "type": "jpeg", "tag": 5}) == (
        "field 'tag' must be a string, not an integer"
    )


# -- numbers: legacy clamps and refusals ------------------------------------------------------


@pytest.mark.parametrize(("frame", "expected"), [(-5, 1), (0, 1), (1, 1), (17, 17), (17.0, 17)])
def test_frame_below_one_becomes_one(frame: Any, expected: int) -> None:
    assert jpeg(frame=frame).frame == expected


@pytest.mark.parametrize(
    ("xsize", "expected"), [(-1, 8), (0, 8), (7, 8), (8, 8), (512.0, 512), (10000, 10000)]
)
def test_xsize_is_raised_to_eight(xsize: Any, expected: int) -> None:
    assert jpeg(xsize=xsize).xsize == expected


def test_xsize_above_the_limit_is_refused() -> None:
    assert refusal({"pid": PID, "type": "jpeg", "xsize": 10001}) == (
        "field 'xsize' is 10001, above the limit of 10000 pixels"
    )
    limits = LimitSettings(max_xsize_px=2000)
    with pytest.raises(RequestError, match="above the limit of 2000 pixels"):
        parse_request(encode({"pid": PID, "type": "jpeg", "xsize": 2001}), limits)


@pytest.mark.parametrize(("ysize", "expected"), [(0, None), (-4, None), (3, 8), (700, 700)])
def test_ysize_zero_or_negative_keeps_the_aspect(ysize: int, expected: int | None) -> None:
    assert jpeg(ysize=ysize).ysize == expected


@pytest.mark.parametrize(
    ("field", "value", "received"),
    [
        ("xsize", "512", "a string"),
        ("xsize", 512.5, "a non-integral number (512.5)"),
        ("frame", True, "a boolean"),
        ("contrast", None, "null"),
        ("wval", {}, "an object"),
        ("labelHeight", [16], "an array"),
        ("quality", "high", "a string"),
    ],
)
def test_integer_fields_refuse_other_types(field: str, value: Any, received: str) -> None:
    assert refusal({"pid": PID, "type": "jpeg", field: value}) == (
        f"field '{field}' must be an integer, not {received}"
    )


def test_integers_must_fit_in_64_bits() -> None:
    assert refusal({"pid": PID, "type": "jpeg", "contrast": 2**63}) == (
        "field 'contrast' is out of range (it must fit in 64 bits)"
    )
    assert jpeg(contrast=2**63 - 1).contrast == 2**63 - 1


@pytest.mark.parametrize(
    ("zoom", "expected"),
    [
        (2.04, 2.0),
        (2.05, 2.1),
        (2.26, 2.3),
        (3, 3.0),
        (64.04, 64.0),
        (1.04, 1.0),
        (0.5, 1.0),
        (-9, 1.0),
    ],
)
def test_zoom_is_rounded_to_a_tenth(zoom: float, expected: float) -> None:
    assert jpeg(zoom=zoom, segcol=1, segrow=2).zoom == expected


@pytest.mark.parametrize("zoom", [1.0, 1.04, 0.0, -3.0])
def test_zoom_one_or_less_resets_the_segment(zoom: float) -> None:
    request = jpeg(zoom=zoom, segcol=3.5, segrow=-2)
    assert (request.zoom, request.segcol, request.segrow) == (1.0, 0.0, 0.0)


def test_segments_may_be_fractional_and_off_the_image() -> None:
    request = jpeg(zoom=4, segcol=-1.25, segrow=7.5)
    assert (request.segcol, request.segrow) == (-1.25, 7.5)
    assert refusal({"pid": PID, "type": "jpeg", "zoom": 4, "segrow": 2e6}) == (
        "field 'segrow' is 2e+06, more than 1e+06 segments off the image"
    )


@pytest.mark.parametrize("zoom", [64.1, 65, 1e308])
def test_zoom_above_the_limit_is_refused(zoom: float) -> None:
    assert refusal({"pid": PID, "type": "jpeg", "zoom": zoom}).startswith("field 'zoom' is ")
    assert "above the limit of 64" in refusal({"pid": PID, "type": "jpeg", "zoom": zoom})


@pytest.mark.parametrize(("field", "value"), [("zoom", "2"), ("segcol", None), ("segrow", False)])
def test_number_fields_refuse_other_types(field: str, value: Any) -> None:
    assert refusal({"pid": PID, "type": "jpeg", "zoom": 2, field: value}).startswith(
        f"field '{field}' must be a number, not "
    )


@pytest.mark.parametrize(
    ("height", "expected"), [(-1, 0), (0, 0), (16, 16), (64, 64), (65, 0), (1000, 0)]
)
def test_label_height_out_of_range_means_no_banner(height: int, expected: int) -> None:
    assert jpeg(labelHeight=height).label_height == expected


@pytest.mark.parametrize("quality", [0, 101, -1])
def test_quality_out_of_range_is_refused(quality: int) -> None:
    assert refusal({"pid": PID, "type": "jpeg", "quality": quality}) == (
        f"field 'quality' must be from 1 to 100, not {quality}"
    )


def test_unknown_colormap_is_refused_naming_the_known_ones() -> None:
    assert refusal({"pid": PID, "type": "jpeg", "colormap": "jet"}) == (
        "unknown colormap 'jet'; known colormaps: grey, heat, inverse, viridis"
    )


@pytest.mark.parametrize("chroma", ["422", "4:4:4", ""])
def test_chroma_other_than_420_or_444_is_refused(chroma: str) -> None:
    assert refusal({"pid": PID, "type": "jpeg", "chroma": chroma}) == (
        f"field 'chroma' must be one of 420, 444, not {chroma!r}"
    )


# -- strings ------------------------------------------------------------------------------------


def test_strings_longer_than_the_limit_are_refused() -> None:
    assert jpeg(label="x" * 4096).label == "x" * 4096
    assert refusal({"pid": PID, "type": "jpeg", "label": "x" * 4097}) == (
        "field 'label' is 4097 characters long, above the limit of 4096"
    )
    assert refusal({"pid": "p" * 4097, "type": "jpeg"}) == (
        "field 'pid' is longer than 4096 characters"
    )


def test_file_name_with_nul_is_refused() -> None:
    assert refusal({"pid": PID, "type": "jpeg", "fn": "a\u0000b"}) == (
        "field 'fn' contains a NUL character"
    )


def test_jpeg_without_file_name_asks_for_the_blank_image() -> None:
    assert jpeg().fn == ""
    assert jpeg(fn="").fn == ""


@pytest.mark.parametrize("kind", ["spots", "meta"])
@pytest.mark.parametrize("fn", [None, ""])
def test_spots_and_meta_need_a_file_name(kind: str, fn: str | None) -> None:
    job: dict[str, Any] = {"pid": PID, "type": kind}
    if fn is not None:
        job["fn"] = fn
    assert refusal(job) == f"Missing filename (fn) for a {kind} request"


def test_spots_xsize_defaults_to_384_only_when_absent() -> None:
    spots = parse_request(encode({"pid": PID, "type": "spots", "fn": "a.cbf", "frame": 0}))
    assert spots == SpotsRequest(pid=PID, fn="a.cbf", frame=1, xsize=384)
    spots = parse_request(encode({"pid": PID, "type": "spots", "fn": "a.cbf", "xsize": 2}))
    assert isinstance(spots, SpotsRequest)
    assert spots.xsize == 8
    assert refusal({"pid": PID, "type": "spots", "fn": "a.cbf", "xsize": "384"}) == (
        "field 'xsize' must be an integer, not a string"
    )


def test_meta_request() -> None:
    meta = parse_request(encode({"pid": PID, "type": "meta", "fn": "x_master.h5", "frame": 5}))
    assert meta == MetaRequest(pid=PID, fn="x_master.h5", frame=5)


# -- the payload itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "Failed to parse request: Expecting value at line 1 column 1"),
        (b'{"pid": ', "Failed to parse request: Expecting value at line 1 column 9"),
        (b"\xff{}", "Failed to parse request: invalid UTF-8 at byte 0: invalid start byte"),
        (b"[1, 2]", "request must be a JSON object, not an array"),
        (b'"pid"', "request must be a JSON object, not a string"),
        (b"null", "request must be a JSON object, not null"),
        (
            b'{"pid": "a", "pid": "b", "type": "jpeg"}',
            "Failed to parse request: duplicate key 'pid'",
        ),
        (
            b'{"pid": "a", "type": "jpeg", "zoom": NaN}',
            "Failed to parse request: NaN is not valid JSON",
        ),
        (
            b'{"pid": "a", "type": "jpeg", "x": -Infinity}',
            "Failed to parse request: -Infinity is not valid JSON",
        ),
        (
            b'{"pid": "a", "type": "jpeg", "zoom": 1e400}',
            "Failed to parse request: number 1e400 is out of range",
        ),
        (
            b'{"pid": "a", "type": "jpeg", "x": "\\ud800"}',
            "Failed to parse request: a \\u escape is a lone surrogate, not a character",
        ),
    ],
)
def test_malformed_payloads_are_refused_with_the_reason(payload: bytes, reason: str) -> None:
    assert refusal(payload) == reason


def test_deep_nesting_and_huge_payloads_are_refused() -> None:
    nested = b'{"pid": "a", "type": "jpeg", "x": ' + b"[" * 100 + b"]" * 100 + b"}"
    assert refusal(nested) == "Failed to parse request: nested deeper than 64"
    very_deep = b"[" * 100_000 + b"]" * 100_000
    assert refusal(very_deep).startswith("Failed to parse request: ")
    huge = encode({"pid": PID, "type": "jpeg", "x": "y" * (1 << 20)})
    assert refusal(huge) == f"request is {len(huge)} bytes, above the limit of 1048576"


def test_an_integer_of_5000_digits_is_refused() -> None:
    message = refusal(b'{"pid": "a", "type": "jpeg", "x": ' + b"9" * 5000 + b"}")
    assert message.startswith("Failed to parse request: Exceeds the limit (4300 digits)")


# -- the token is never shown ---------------------------------------------------------------------


def test_token_hash_is_the_start_of_the_sha256() -> None:
    assert token_hash(PID) == hashlib.sha256(PID.encode()).hexdigest()[:12]
    assert len(token_hash("x")) == 12


def test_no_refusal_and_no_repr_contains_the_token() -> None:
    for job in (
        {"pid": PID, "type": "nope"},
        {"pid": PID, "type": "jpeg", "xsize": "big"},
        {"pid": PID, "type": "spots"},
        {"pid": PID, "type": "jpeg", "esaf": "1"},
    ):
        assert PID not in refusal(job)
    request = jpeg(fn="a.h5")
    assert PID not in repr(request)
    assert request.session_hash == token_hash(PID)


# -- the echo -------------------------------------------------------------------------------------


def test_echo_is_the_request_plus_additions_compact_and_sorted() -> None:
    payload = b'{"type": "jpeg", "pid": "P", "xsize": 512.0, "tag": "t\xc3\xa9",'
    payload += b' "zz": [1, {"b": 2, "a": 1}]}'
    request = parse_request(payload)
    echoed = echo_job(request, wval_used=3, bval_used=250)
    assert echoed == (
        b'{"bval_used":250,"pid":"P","tag":"t\xc3\xa9","type":"jpeg","wval_used":3,'
        b'"xsize":512.0,"zz":[1,{"a":1,"b":2}]}'
    )


def test_echo_additions_replace_fields_of_the_request() -> None:
    request = parse_request(encode({"pid": "P", "type": "spots", "fn": "a", "zoom": 4}))
    assert echo_job(request, zoom=1.0, segcol=0.0, segrow=0.0, xsize=384) == (
        b'{"fn":"a","pid":"P","segcol":0.0,"segrow":0.0,"type":"spots","xsize":384,"zoom":1.0}'
    )
    assert json.loads(echo_job(request))["zoom"] == 4  # the request itself is unchanged


# -- any JSON value in any field: a request or a RequestError, nothing else ----------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "pid",
    "esaf",
    "type",
    "tag",
    "fn",
    "frame",
    "xsize",
    "ysize",
    "zoom",
    "segcol",
    "segrow",
    "contrast",
    "wval",
    "label",
    "labelHeight",
    "quality",
    "colormap",
]
TYPES = st.sampled_from(["jpeg", "SPOTS", "meta", "index", "rsync_transfer", "other"])


@settings(max_examples=400, deadline=None)
@given(
    base=st.fixed_dictionaries(
        {
            "pid": st.just(PID) | st.text(max_size=5),
            "type": TYPES | JSON_VALUES,
            "fn": st.just("a.h5") | st.text(max_size=5),
        }
    ),
    extra=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.integers(-20, 20), max_size=6),
)
def test_any_json_gives_a_request_or_a_request_error(
    base: dict[str, Any], extra: dict[str, Any]
) -> None:
    payload = json.dumps({**base, **extra}).encode()
    try:
        request = parse_request(payload)
    except RequestError as exc:
        assert str(exc)
        return
    assert request.pid
    assert request.esaf >= 0
    assert json.loads(echo_job(request, extra_field=1))["extra_field"] == 1
    if isinstance(request, JpegRequest | SpotsRequest):
        assert 8 <= request.xsize <= 10000
        assert request.frame >= 1
    if isinstance(request, JpegRequest):
        assert 1.0 <= request.zoom <= 64.0
        assert 0 <= request.label_height <= 64
        assert request.ysize is None or 8 <= request.ysize <= 10000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_a_request_or_a_request_error(payload: bytes) -> None:
    try:
        parse_request(payload)
    except RequestError as exc:
        assert str(exc)


def test_analysis_fields() -> None:
    request = parse_request(
        encode(
            {
                "pid": PID,
                "type": "analysis",
                "fn": "/d/x.cbf",
                "frame": 3,
                "d_min": 2,
                "algorithm": "dispersion",
                "filter_ice": False,
            }
        )
    )
    assert isinstance(request, AnalysisRequest)
    assert (request.frame, request.d_min, request.d_max) == (3, 2.0, None)
    assert (request.algorithm, request.filter_ice) == ("dispersion", False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "Missing filename (fn) for an analysis request"),
        ({"fn": "/x", "d_min": 0}, "field 'd_min' must be a positive number, not 0"),
        ({"fn": "/x", "d_min": 3, "d_max": 2}, "d_min 3 Å must be below d_max 2 Å"),
        (
            {"fn": "/x", "algorithm": "xds"},
            "field 'algorithm' must be dispersion_extended or dispersion, not 'xds'",
        ),
        (
            {"fn": "/x", "filter_ice": "yes"},
            "field 'filter_ice' must be true or false, not a string",
        ),
    ],
)
def test_analysis_refusals(fields: dict[str, Any], message: str) -> None:
    assert refusal({"pid": PID, "type": "analysis", **fields}) == message
