"""Command line: one sub-command per job; each parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imageserver import __version__, daemons, indexing
from imageserver.allocator import tune_allocator
from imageserver.analysis import AnalysisParams, analyse_file
from imageserver.client import ReplyTimeoutError, send_request
from imageserver.config import load_settings
from imageserver.demo import run_demo as demo
from imageserver.errors import FrameRangeError, ImageServerError
from imageserver.formats import read_meta
from imageserver.formats.legacy import legacy_meta
from imageserver.imaging.jpeg_options import JPEG_CHROMA
from imageserver.imaging.spotfinder import ALGORITHMS
from imageserver.logs import configure_logging
from imageserver.render import Look, ViewSpec, render_file
from imageserver.sampledata.dataset import write_sample_data
from imageserver.service.auth import (
    connect_session_store,
    generate_keypair,
    load_private_key,
    sign_isauth,
    write_session,
)
from imageserver.thumbnails import make_thumbnails

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tune_allocator()
    command: Command = args.command
    try:
        return command(args)
    except ImageServerError as exc:
        print(f"imageserver: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imageserver", description="Diffraction frames to JPEG views, metadata and thumbnails."
    )
    parser.add_argument("--version", action="version", version=f"imageserver {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the whole service on sample data with a private Redis (the main job)"
    )
    demo.add_argument("directory", nargs="?", type=Path, default=Path("sample-data"))
    demo.add_argument("--frames", type=int, default=4, help="frames per Eiger series")
    demo.add_argument("--once", action="store_true", help="stop after the sample requests")
    demo.set_defaults(command=run_demo)

    sample = sub.add_parser("sample-data", help="write a realistic synthetic dataset")
    sample.add_argument("directory", type=Path)
    sample.add_argument("--frames", type=int, default=4, help="frames per Eiger series")
    sample.set_defaults(command=run_sample_data)

    jpeg = sub.add_parser("jpeg", help="render one view of one frame as JPEG (or PNG)")
    jpeg.add_argument("file", type=Path)
    _add_view_arguments(jpeg)
    _add_look_arguments(jpeg)
    jpeg.add_argument("-o", "--output", type=Path, required=True, help=".jpg/.jpeg or .png")
    jpeg.set_defaults(command=run_jpeg)

    meta = sub.add_parser("meta", help="print a frame's metadata as JSON (legacy field names)")
    meta.add_argument("file", type=Path)
    meta.add_argument("--frame", type=int, default=1)
    meta.set_defaults(command=run_meta)

    analysis = sub.add_parser("analysis", help="DIALS's spots and per-image numbers as JSON")
    analysis.add_argument("files", nargs="+", type=Path, help="frame files or Eiger masters")
    analysis.add_argument("--frame", type=int, default=None, help="1-based (default: all)")
    analysis.add_argument("--d-min", type=float, default=None, help="high resolution limit Å")
    analysis.add_argument("--d-max", type=float, default=None, help="low resolution limit Å")
    analysis.add_argument(
        "--algorithm", choices=ALGORITHMS, default="dispersion_extended", help="threshold"
    )
    analysis.add_argument("--no-ice-filter", action="store_true", help="keep ice-ring spots")
    analysis.set_defaults(command=run_analysis)

    thumbs = sub.add_parser("thumbnails", help="JPEG thumbnails of every frame of every input")
    thumbs.add_argument("inputs", nargs="+", type=Path, help="files or directories")
    thumbs.add_argument("--size", type=int, default=256, help="thumbnail width in pixels")
    thumbs.add_argument("--out", type=Path, required=True, help="output directory")
    thumbs.add_argument("--jobs", type=int, default=0, help="processes (default: cores)")
    thumbs.add_argument("--force", action="store_true", help="redo up-to-date thumbnails")
    _add_look_arguments(thumbs)
    thumbs.set_defaults(command=run_thumbnails)

    index = sub.add_parser("index", help="autoindex frames as the invoking user (DIALS default)")
    index.add_argument("files", nargs="+", type=Path, help="an Eiger master or frame files")
    index.add_argument("--frames", default=None, help="A-B: of the master, or of FILE's run")
    index.add_argument("--keep", action="store_true", help="keep the scratch directory")
    index.add_argument("--timeout", type=float, default=600.0, help="seconds before it is stopped")
    index.add_argument(
        "--command", dest="indexer", default=None, metavar="CMD", help="RAPD-contract indexer"
    )
    index.add_argument("--scratch", type=Path, default=None, help="scratch root (default: TMPDIR)")
    index.set_defaults(command=run_index)
    _add_service_commands(sub)
    return parser


def _add_service_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help=daemons.SERVE_HELP)
    daemons.add_serve_arguments(serve)
    serve.set_defaults(command=daemons.run_serve)

    proxy = sub.add_parser("proxy", help=daemons.PROXY_HELP)
    daemons.add_proxy_arguments(proxy)
    proxy.set_defaults(command=daemons.run_proxy)

    web = sub.add_parser("web", help="run the HTTP gateway and browser viewer (a proxy client)")
    web.add_argument("--config", type=Path, default=None, help="TOML settings file")
    web.add_argument("--listen", default=None, help="HOST:PORT (default [web] listen)")
    web.set_defaults(command=run_web)

    request = sub.add_parser("request", help="send one legacy JSON request and save the reply")
    request.add_argument("json", help='the request, e.g. \'{"type":"jpeg","pid":"…","fn":"…"}\'')
    request.add_argument("--endpoint", default=None, help="proxy front (default from config)")
    request.add_argument("--config", type=Path, default=None, help="TOML settings file")
    request.add_argument("-o", "--output", type=Path, default=None, help="where to save an image")
    request.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    request.set_defaults(command=run_request)

    keygen = sub.add_parser("keygen", help="make a session signing key pair")
    keygen.add_argument("private_key", type=Path)
    keygen.add_argument("public_key", type=Path)
    keygen.add_argument("--kind", choices=("ed25519", "rsa"), default="ed25519")
    keygen.set_defaults(command=run_keygen)

    session = sub.add_parser("session", help="sessions as the authentication tier writes them")
    session_sub = session.add_subparsers(required=True, metavar="ACTION")
    create = session_sub.add_parser("create", help="sign isAuth and store it in the session Redis")
    create.add_argument("--user", required=True, help="Unix login name")
    create.add_argument("--esaf", type=int, nargs="*", default=[], help="allowed ESAFs")
    create.add_argument("--key", type=Path, required=True, help="private key (PEM)")
    create.add_argument("--pid", default=None, help="session token (default: random)")
    create.add_argument("--ttl", type=int, default=None, help="seconds until it expires")
    create.add_argument("--config", type=Path, default=None, help="TOML settings file")
    create.add_argument("--redis", default=None, help="session Redis URL (default from config)")
    create.set_defaults(command=run_session_create)


def _add_view_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frame", type=int, default=1, help="1-based frame number")
    parser.add_argument("--size", type=int, default=1024, help="output width (xsize)")
    parser.add_argument("--ysize", type=int, default=None, help="output height (default: aspect)")
    parser.add_argument("--zoom", type=float, default=1.0)
    parser.add_argument("--segcol", type=float, default=0.0, help="tile column at this zoom")
    parser.add_argument("--segrow", type=float, default=0.0, help="tile row at this zoom")


def _add_look_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contrast", type=int, default=0, help="black level; <=0 automatic")
    parser.add_argument("--wval", type=int, default=0, help="white level; <0 automatic")
    parser.add_argument("--colormap", default="grey", help="grey, inverse, heat, viridis")
    parser.add_argument("--label", default="", help="banner text")
    parser.add_argument("--label-height", type=int, default=0, help="banner rows (0..64)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100")
    parser.add_argument(
        "--chroma", choices=JPEG_CHROMA, default="420", help="JPEG chroma subsampling"
    )


def _look(args: argparse.Namespace) -> Look:
    return Look(
        contrast=args.contrast,
        wval=args.wval,
        colormap=args.colormap,
        label=args.label,
        label_height_px=args.label_height,
        quality=args.quality,
        chroma=args.chroma,
    )


def run_jpeg(args: argparse.Namespace) -> int:
    spec = ViewSpec(
        path=args.file,
        frame=args.frame,
        xsize=args.size,
        ysize=args.ysize,
        zoom=args.zoom,
        segcol=args.segcol,
        segrow=args.segrow,
    )
    image_format = "png" if args.output.suffix.lower() == ".png" else "jpeg"
    image, _ = render_file(spec, replace(_look(args), image_format=image_format))
    args.output.write_bytes(image.data)
    print(f"{args.output}: {len(image.data)} bytes")
    return 0


def run_meta(args: argparse.Namespace) -> int:
    meta = read_meta(args.file)
    if not meta.first_frame <= args.frame <= meta.last_frame:
        raise FrameRangeError(
            f"{args.file}: frame {args.frame} is outside {meta.first_frame}..{meta.last_frame}"
        )
    print(
        json.dumps(legacy_meta(meta, fn=str(args.file), frame=args.frame), indent=2, sort_keys=True)
    )
    return 0


def run_analysis(args: argparse.Namespace) -> int:
    """One JSON object per frame on stdout (file, frame, then the analysis result)."""
    params = AnalysisParams(
        d_min=args.d_min,
        d_max=args.d_max,
        algorithm=args.algorithm,
        filter_ice=not args.no_ice_filter,
    )
    jobs: list[tuple[Path, int]] = []
    for path in args.files:
        if args.frame is not None:
            jobs.append((path, args.frame))
        else:
            meta = read_meta(path)
            jobs.extend((path, n) for n in range(meta.first_frame, meta.last_frame + 1))
    for path, number in tqdm(jobs, unit="frame", disable=len(jobs) < 2, file=sys.stderr):
        result = analyse_file(path, number, params)
        print(json.dumps({"file": str(path), "frame": number, **result.to_json()}), flush=True)
    return 0


def run_sample_data(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    paths = write_sample_data(args.directory, n_frames=args.frames)
    for path in paths:
        print(path)
    print(f"wrote {len(paths)} files in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def run_thumbnails(args: argparse.Namespace) -> int:
    report = make_thumbnails(
        args.inputs,
        out_dir=args.out,
        size_px=args.size,
        look=_look(args),
        jobs=args.jobs or None,
        force=args.force,
    )
    print(report.summary())
    return 0 if not report.failures else 1


def run_index(args: argparse.Namespace) -> int:
    """Progress on stderr, the result JSON on stdout; 1 when the result is an error."""
    try:
        frames = indexing.parse_frames(args.frames) if args.frames else None
        job = indexing.build_input(args.files, frames)
    except indexing.IndexingInputError as exc:
        print(f"imageserver: error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    outcome = indexing.run_indexing(
        job,
        scratch_root=args.scratch or Path(tempfile.gettempdir()),
        timeout_s=args.timeout,
        progress=lambda line: print(
            f"[{time.monotonic() - started:6.1f} s] {line}", file=sys.stderr, flush=True
        ),
        command=shlex.split(args.indexer) if args.indexer else indexing.DEFAULT_COMMAND,
        environment=indexing.minimal_environment(os.environ.get("PATH")),
        keep=args.keep,
    )
    if outcome.scratch_dir is not None:
        print(f"scratch directory kept: {outcome.scratch_dir}", file=sys.stderr)
    print(json.dumps(outcome.result, indent=2))
    return 0 if outcome.ok else 1


def run_web(args: argparse.Namespace) -> int:
    from imageserver.web.server import run_gateway  # the web stack only where it is used

    settings = load_settings(args.config)
    if args.listen:
        settings = replace(settings, web=replace(settings.web, listen=args.listen))
    configure_logging(settings.logging.level)
    run_gateway(settings)
    return 0


def run_request(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or load_settings(args.config).proxy.front_endpoint
    try:
        request = json.loads(args.json)
    except json.JSONDecodeError as exc:
        print(f"imageserver: error: the request is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        reply = send_request(endpoint, request, timeout_s=args.timeout)
    except ReplyTimeoutError as exc:
        print(f"imageserver: error: {exc}", file=sys.stderr)
        return 3
    if reply.error is not None:
        print(f"error reply: {reply.error}", file=sys.stderr)
        return 1
    print(json.dumps({"job": reply.job, "meta": reply.meta}, indent=2, sort_keys=True))
    if reply.image is not None:
        output = args.output or Path("reply.jpg")
        output.write_bytes(reply.image)
        print(f"image: {output} ({len(reply.image)} bytes)", file=sys.stderr)
    return 0


def run_keygen(args: argparse.Namespace) -> int:
    generate_keypair(args.private_key, args.public_key, kind=args.kind)
    print(
        f"private key {args.private_key} (keep it on the authentication host), "
        f"public key {args.public_key} (give it to the image servers)"
    )
    return 0


def run_session_create(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    pid = args.pid or secrets.token_hex(16)
    isauth: dict[str, Any] = {"pid": pid, "uid": args.user, "allowedESAFs": args.esaf}
    if args.ttl is not None:
        isauth["exp"] = int(time.time()) + args.ttl
    text, signature = sign_isauth(isauth, load_private_key(args.key))
    if args.redis:
        settings = replace(settings, session=replace(settings.session, redis_url=args.redis))
    write_session(connect_session_store(settings), pid, text, signature, args.ttl)
    print(pid)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    return demo(args.directory, n_frames=args.frames, keep_serving=not args.once)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
