"""The HTTP gateway against a raw ZeroMQ client of the same chain, in the same run.

Each row sends the same wire request both ways, alternating sample by sample (the VM's speed
drifts): a persistent REQ socket per thread (as is.js holds one) against a persistent HTTP
keep-alive connection per thread to `imageserver web`. The gateway's cost is the difference.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from chain_common import (
    BENCH_ESAF,
    BenchUsers,
    Crowd,
    ThreadClients,
    check,
    ms_quantile,
    write_series_once,
)
from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService
from run import machine_line

IDENTITY = '[identity]\nesaf_group_pattern = "isbenchesaf{esaf}"\n'


class HttpClients:
    """A keep-alive HTTP connection per thread, as a browser keeps a few per site."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
        self._local = threading.local()

    def get(self, endpoint: str, params: dict[str, Any]) -> bytes:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
            self._local.connection = connection
        connection.request("GET", f"/api/v1/{endpoint}?{urlencode(params)}", headers=self._headers)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"HTTP {response.status}: {body[:300]!r}")
        return body


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("sample-data-chain"))
    parser.add_argument("--runs", type=int, default=30, help="samples per row and column")
    args = parser.parse_args()
    master = write_series_once(args.data.resolve())
    work = Path(tempfile.mkdtemp(prefix="imageserver-webbench-", dir="/tmp"))
    work.chmod(0o755)
    redis_server = EmbeddedRedis(work / "redis").start()
    users = BenchUsers()
    rows: list[tuple[str, list[float], list[float], str]] = []
    try:
        esafs = users.make_esaf_group()
        esaf = BENCH_ESAF if esafs else 0
        service = LocalService(work / "service", redis_server.url, IDENTITY, web_port=0)
        service.start()
        zmq_clients = ThreadClients(service)
        crowd = Crowd(16)
        try:
            token = service.session(users.make(), esafs)
            assert service.web_url is not None
            web = HttpClients(service.web_url, token)
            rows = bench_rows(master, esaf, token, zmq_clients, web, crowd, args.runs)
        finally:
            crowd.close()
            zmq_clients.close()
            service.stop()
    finally:
        users.remove()
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, args.runs)
    return 0


def bench_rows(
    master: Path,
    esaf: int,
    token: str,
    zmq_clients: ThreadClients,
    web: HttpClients,
    crowd: Crowd,
    runs: int,
) -> list[tuple[str, list[float], list[float], str]]:
    fn = str(master)

    def over_zmq(**fields: Any) -> None:
        job = {"type": "jpeg", "pid": token, "esaf": esaf, "fn": fn, **fields}
        check(zmq_clients.request(job))

    def over_http(**params: Any) -> None:
        web.get("image", {"esaf": esaf, "path": fn, **params})

    def meta_zmq() -> None:
        check(zmq_clients.request({"type": "meta", "pid": token, "esaf": esaf, "fn": fn}))

    def meta_http() -> None:
        web.get("meta", {"esaf": esaf, "path": fn})

    view = {"frame": 1, "contrast": 40, "wval": 0, "xsize": 1024}
    view_http = {"frame": 1, "black": 40, "white": 0, "size": 1024}
    over_zmq(**view)
    over_http(**view_http)
    meta_zmq()
    rows = []
    zmq_s, http_s = [], []
    for _ in range(runs):
        zmq_s.append(timed(lambda: over_zmq(**view)))
        http_s.append(timed(lambda: over_http(**view_http)))
    rows.append(("the same cached 1024 view (exact repeat)", zmq_s, http_s, "≤ +3 ms"))
    zmq_s, http_s = [], []
    for _ in range(runs):
        zmq_s.append(timed(meta_zmq))
        http_s.append(timed(meta_http))
    rows.append(("meta of a series", zmq_s, http_s, "≤ +3 ms"))
    raw_s: list[float] = []
    for _ in range(runs):
        raw_s.append(timed(lambda: over_http(**view_http, format="raw")))
    rows.append(("raw 1024 view at full depth, gzip (HTTP only)", [], raw_s, ""))
    zmq_s, http_s = [], []
    frames = iter(range(2, 2 + 2 * max(1, min(runs, 23))))
    grid = [(c, r) for r in range(4) for c in range(4)]
    tile_zmq = {"xsize": 256, "zoom": 4, "contrast": 40, "wval": 0}
    tile_http = {"size": 256, "zoom": 4, "black": 40, "white": 0}
    for _ in range(min(runs, 23)):  # a frame never asked for before, each way
        for samples, send, col, row, fields in (
            (zmq_s, over_zmq, "segcol", "segrow", tile_zmq),
            (http_s, over_http, "x", "y", tile_http),
        ):
            frame = next(frames)
            samples.append(
                crowd.wall(
                    [
                        lambda send=send, at={**fields, col: c, row: r, "frame": frame}: send(**at)
                        for c, r in grid
                    ]
                )
            )
    rows.append(("16 tiles ×4, 256 wide, of a new frame at once (wall)", zmq_s, http_s, "≈ ZeroMQ"))
    return rows


def print_table(rows: list[tuple[str, list[float], list[float], str]], runs: int) -> None:
    print(machine_line())
    print(f"--runs {runs}; ms; each row alternates ZeroMQ and HTTP samples")
    print()
    head = (
        f"| {'what':<54} | {'ZeroMQ med':>10} | {'ZeroMQ p95':>10} | {'HTTP med':>8} "
        f"| {'HTTP p95':>8} | {'HTTP − ZeroMQ':>13} | {'target':<9} |"
    )
    print(head)
    print("|" + "|".join("-" * len(cell) for cell in head.split("|")[1:-1]) + "|")
    for name, zmq_s, http_s, target in rows:
        extra = (
            f"{(statistics.median(http_s) - statistics.median(zmq_s)) * 1000:+.1f}"
            if zmq_s and http_s
            else ""
        )
        print(
            f"| {name:<54} | {ms_quantile(zmq_s, 0.5):>10} | {ms_quantile(zmq_s, 0.95):>10} "
            f"| {ms_quantile(http_s, 0.5):>8} | {ms_quantile(http_s, 0.95):>8} "
            f"| {extra:>13} | {target:<9} |"
        )


if __name__ == "__main__":
    sys.exit(main())
