"""The main job on embedded defaults: the whole service on one machine, with sample data.

It starts a private Redis, writes sample detector files, a signing key pair and a signed
session, starts the proxy, the manager and the HTTP gateway on local sockets, sends a few
requests through the whole chain (printing what came back and how long it took), prints the
link that opens the browser viewer logged in on the sample data, and then keeps serving until
Ctrl-C, when it stops everything it started. No root is needed; started as root it makes an
unprivileged demo account, because the server never runs requests as root.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from imageserver.client import Reply
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService
from imageserver.sampledata.dataset import EIGER16M_MASTER, PILATUS_CBF, write_sample_data

_READY_MARK = ".sample-data-complete"
DEMO_ACCOUNT = "imageserver-demo"
START_DEADLINE_S = 120.0
WEB_PORT = 8080
"""The viewer's port when it is free; another free port otherwise."""


def run_demo(directory: Path, *, n_frames: int = 4, keep_serving: bool = True) -> int:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    _write_sample_data_once(directory, n_frames)
    user = _demo_user(directory)
    redis_server = EmbeddedRedis(directory / "redis").start()
    service = LocalService(directory / "service", redis_server.url, web_port=_web_port())
    try:
        service.start()
        pid = service.session(user, [])
        print(
            f"service up: proxy {service.front}, gateway {service.web_url}, "
            f"session Redis {redis_server.url}, user {user}"
        )
        _show_requests(directory, service, pid)
        viewer = "/?" + urllib.parse.urlencode(
            {"path": str(directory / EIGER16M_MASTER), "frame": 1}
        )
        print(
            "\nsend your own (another terminal):\n"
            f"  .venv/bin/imageserver request --endpoint {service.front} \\\n"
            f'    \'{{"type":"jpeg","pid":"{pid}","fn":"{directory / EIGER16M_MASTER}",'
            f'"frame":2,"xsize":800,"zoom":2,"segcol":1,"segrow":0}}\' -o view.jpg\n'
            f"config and logs: {service.directory}/\n"
            f"\nopen the viewer, logged in on the sample data (HTTP API: {service.web_url}/docs):\n"
            f"  {service.login_url(pid, viewer)}\n"
        )
        if keep_serving:
            print("serving until Ctrl-C ...", flush=True)
            _wait_for_interrupt(service)
        return 0
    finally:
        service.stop()
        redis_server.stop()
        print("stopped the gateway, proxy, server and Redis")


def _web_port() -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", WEB_PORT))
        except OSError:
            return 0
    return WEB_PORT


def _write_sample_data_once(directory: Path, n_frames: int) -> None:
    mark = directory / _READY_MARK
    if mark.exists():
        return
    print(f"writing sample data to {directory}/ (once; about a minute) ...", flush=True)
    started = time.perf_counter()
    write_sample_data(directory, n_frames=n_frames)
    mark.write_text("ok\n")
    for path in directory.iterdir():
        path.chmod(0o644 if path.is_file() else 0o755)
    print(f"  done in {time.perf_counter() - started:.1f} s")


def _demo_user(directory: Path) -> str:
    """The login whose session the demo signs: yourself, or a demo account when root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid()).pw_name
    try:
        pwd.getpwnam(DEMO_ACCOUNT)
    except KeyError:
        home = directory / "demo-home"
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/usr/sbin/nologin",
                DEMO_ACCOUNT,
            ],
            check=True,
        )
        print(f"created the unprivileged account {DEMO_ACCOUNT} (requests never run as root)")
    return DEMO_ACCOUNT


def _show_requests(directory: Path, service: LocalService, pid: str) -> None:
    views = directory / "views"
    views.mkdir(exist_ok=True)
    master = str(directory / EIGER16M_MASTER)
    requests: list[tuple[str, dict[str, Any]]] = [
        (
            "eiger16m_frame1.jpg",
            {
                "type": "jpeg",
                "fn": master,
                "xsize": 1024,
                "label": "Eiger2 X 16M",
                "labelHeight": 16,
            },
        ),
        (
            "eiger16m_frame1_contrast.jpg",
            {"type": "jpeg", "fn": master, "xsize": 1024, "contrast": 40, "wval": 0},
        ),
        (
            "eiger16m_frame2_heat.jpg",
            {"type": "jpeg", "fn": master, "frame": 2, "xsize": 1024, "colormap": "heat"},
        ),
        (
            "eiger16m_zoom4_tile_1_1.jpg",
            {"type": "jpeg", "fn": master, "xsize": 512, "zoom": 4, "segcol": 1, "segrow": 1},
        ),
        ("pilatus6m.jpg", {"type": "jpeg", "fn": str(directory / PILATUS_CBF), "xsize": 1024}),
        ("missing.jpg", {"type": "jpeg", "fn": str(directory / "no-such-file.cbf"), "xsize": 256}),
        ("", {"type": "spots", "fn": master, "frame": 2}),
        ("", {"type": "meta", "fn": master}),
        ("", {"type": "analysis", "fn": str(directory / PILATUS_CBF)}),
        ("", {"type": "list", "dir": str(directory)}),
    ]
    print(f"requests through proxy → manager → worker (images in {views}/):")
    for name, request in requests:
        started = time.perf_counter()
        reply = service.request({**request, "pid": pid, "tag": name or request["type"]})
        elapsed_ms = (time.perf_counter() - started) * 1000
        target = name or request.get("fn") or request.get("dir", "")
        print(f"  {request['type']:<8} {target:<32} {elapsed_ms:7.1f} ms  {_summary(reply)}")
        if name and reply.image is not None:
            (views / name).write_bytes(reply.image)


def _summary(reply: Reply) -> str:
    if reply.error is not None:
        return f"error: {reply.error}"
    job, meta = reply.job, reply.meta
    if "error" in job:
        return f"blank image: {job['error']}"
    if "bval_used" in job:
        return (
            f"{len(reply.image or b'')} bytes, black {job['bval_used']} "
            f"white {job['wval_used']}, spots {meta.get('spots')}"
        )
    if "n_spots_total" in meta:
        return (
            f"{meta['n_spots_total']} spots as DIALS finds them "
            f"({meta['n_spots_no_ice']} off ice rings), "
            f"estimated d_min {meta['estimated_d_min']:.2f} Å"
        )
    if "datasets" in meta:
        return f"{len(meta['datasets'])} datasets, {len(meta['dirs'])} directories"
    if "spots" in meta:
        return f"{meta['spots']} spots in frame {meta['frame']}"
    return (
        f"{meta.get('x_pixels_in_detector')}×{meta.get('y_pixels_in_detector')} px, "
        f"frames {meta.get('first_frame')}..{meta.get('last_frame')}, "
        f"{meta.get('wavelength')} Å"
    )


def _wait_for_interrupt(service: LocalService) -> None:
    try:
        while all(process.poll() is None for process in service.processes.values()):
            time.sleep(0.5)
        print("a service process ended; stopping")
    except KeyboardInterrupt:
        print()
