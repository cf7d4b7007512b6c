"""A soak of the whole chain: many mixed requests while a node is killed and Redis restarted.

Run: ``python benchmarks/soak.py`` (or ``scripts/bench --soak``; ``--requests 5000`` for a
quick look). It starts a private Redis, the broker and two `serve` nodes as in production
(`soak_world`), then 16 clients, each a DEALER socket with one request in flight, send
``--requests`` mixed requests (`soak_mix`: a quarter malformed or unauthorised, the rest
views, meta, spots, listings and analyses of the sample data). At 30 % of the run the node
with the most workers is killed (SIGKILL) and started again; at 60 % Redis (sessions and
the shared cache) is shut down, kept down for a second and started again on its saved data.

Every reply is judged: *lost* (none within ``--timeout``), *wrong* (a valid request answered
with anything but its own well-formed success, an invalid one answered with a success or
the wrong refusal, a second reply), or an *error* a disruption explains (busy, worker_failed,
session_store_unavailable, timeout), counted by code. The exit status is 1 when any reply
was lost or wrong. Process memory (VmRSS) is read after a warm-up (every valid request once
per session), at 80 % and at the end; growth of 10 % or more is flagged.

A node takes seconds to start again (its zygote warms the kernels), so a short run may end
before Redis's turn comes: the soak then says which disruption met no request; ``--rate``
spreads a short run out (the test runs 400 requests at 25 per second).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import zmq

from imageserver.embedded_redis import EmbeddedRedis
from imageserver.local_service import LocalService
from soak_memory import growth_rows, serving_processes, snapshot
from soak_mix import Case, Target, Verdict, judge, mixed_case, valid_case
from soak_report import Result, Window, print_summary, summarise
from soak_world import NODES, SoakWorld

CLIENTS = 16
STRAY_WAIT_S = 1.0
"""How long each client waits, after its last reply, for a reply it should not get."""
KILL_AT, REDIS_AT, MID_AT = 0.3, 0.6, 0.8


class Run:
    """The requests of one run, handed out one at a time to the clients, and their results."""

    def __init__(
        self, cases: list[Case] | None, count: int, target: Target, seed: int, rate: float = 0.0
    ) -> None:
        self._cases, self.count = cases, count
        self._target, self._seed = target, seed
        self._interval_s = 1 / rate if rate > 0 else 0.0
        """Between two requests' scheduled sends; 0: each client sends when it has its reply."""
        self._started = time.monotonic()
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.results: list[Result] = []
        self.strays: list[list[bytes]] = []

    def take(self) -> Case | None:
        with self._lock:
            index = next(self._next)
        if index >= self.count:
            return None
        if self._interval_s:
            time.sleep(max(0.0, self._started + index * self._interval_s - time.monotonic()))
        if self._cases is not None:
            return self._cases[index]
        return mixed_case(index, self._target, self._seed)

    @property
    def done(self) -> int:
        return len(self.results)


def client(context: zmq.Context, endpoint: str, run: Run, timeout_s: float) -> None:
    """One client: a DEALER with one request in flight, as a REQ would, but free to send
    frames a REQ cannot (no delimiter)."""
    sock = _connect(context, endpoint)
    try:
        while (case := run.take()) is not None:
            sent = time.monotonic()
            sock.send_multipart(case.frames)
            if not sock.poll(int(timeout_s * 1000)):
                run.results.append(Result.of(case, sent, None, Verdict("lost")))
                sock.close(0)  # a late reply must not pass for the next request's
                sock = _connect(context, endpoint)
                continue
            frames = sock.recv_multipart()
            latency_s = time.monotonic() - sent
            if case.frames[0] == b"":  # the DEALER's delimiter comes back first
                frames = frames[1:] if frames and frames[0] == b"" else [b"?", *frames]
            run.results.append(Result.of(case, sent, latency_s, judge(case, frames)))
        if sock.poll(int(STRAY_WAIT_S * 1000)):
            run.strays.append(sock.recv_multipart())
    finally:
        sock.close(0)


def _connect(context: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def drive(
    service: LocalService, run: Run, clients: int, timeout_s: float
) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=client, args=(service.context, service.front, run, timeout_s), daemon=True
        )
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    return threads


def wait_until(run: Run, fraction: float, threads: list[threading.Thread]) -> None:
    while run.done < fraction * run.count and any(t.is_alive() for t in threads):
        time.sleep(0.02)


# -- disruptions -------------------------------------------------------------------------------


def kill_node(service: LocalService) -> Window:
    """SIGKILL the node holding the most workers (so it holds requests), then start it again."""
    role = max(NODES, key=lambda r: len(serving_processes(service, None).workers_of(r)))
    process = service.processes[role]
    start = time.monotonic()
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    service.restart(role)
    return Window("node killed", start, time.monotonic(), f"{role} killed (SIGKILL), restarted")


def restart_redis(redis: EmbeddedRedis, down_s: float) -> Window:
    """Stop Redis with its data saved (as a restart of a Redis that persists does), keep it
    down ``down_s``, and start it again on the same port with that data."""
    start = time.monotonic()
    client = redis.client()
    client.save()
    client.close()
    if redis.process is not None:
        redis.process.terminate()
        redis.process.wait(timeout=10)
        redis.process = None
    time.sleep(down_s)
    redis.start()
    return Window("Redis restarted", start, time.monotonic(), f"Redis down {down_s:g} s")


def held_at_loss(service: LocalService) -> str:
    """What the broker logged of the lost node: how many requests it held."""
    text = (service.directory / "proxy.log").read_text(errors="replace")
    found = re.findall(r"lost \((.*?)\) with (\d+) requests in flight", text)
    return "; ".join(f"the broker: lost ({why}) with {n} in flight" for why, n in found)


# -- main --------------------------------------------------------------------------------------


def warm_up(service: LocalService, target: Target, clients: int, timeout_s: float) -> list[str]:
    """Every valid request once per session, so caches and heaps have grown before the RSS
    baseline; returns what went wrong."""
    cases = [
        valid_case(f"warm-{s}-{v}", session, view)
        for s, session in enumerate(target.sessions)
        for v, view in enumerate(session.views)
    ]
    run = Run(cases, len(cases), target, 0)
    for thread in drive(service, run, clients, timeout_s):
        thread.join()
    return [r.verdict.why or r.verdict.outcome for r in run.results if r.verdict.outcome != "ok"]


def soak(world: SoakWorld, target: Target, args: argparse.Namespace) -> int:
    service = world.service
    assert service is not None
    if not args.no_warm_up:
        failed = warm_up(service, target, args.clients, args.timeout)
        if failed:
            print(f"soak: the warm-up failed: {failed[:5]}", file=sys.stderr)
            return 1
    before = snapshot(serving_processes(service, world.redis))
    run = Run(None, args.requests, target, args.seed, args.rate)
    started = time.monotonic()
    threads = drive(service, run, args.clients, args.timeout)
    windows = []
    wait_until(run, KILL_AT, threads)
    windows.append(kill_node(service))
    wait_until(run, REDIS_AT, threads)
    windows.append(restart_redis(world.redis, args.redis_down))
    wait_until(run, MID_AT, threads)
    mid = snapshot(serving_processes(service, world.redis))
    for thread in threads:
        thread.join()
    wall_s = time.monotonic() - started - STRAY_WAIT_S
    after = snapshot(serving_processes(service, world.redis))
    windows[0].what += f" ({held_at_loss(service)})"
    memory = growth_rows(before, mid, after)
    summary = summarise(run.results, run.strays, windows, wall_s, memory)
    print_summary(summary)
    if args.json:
        summary.write_json(args.json)
    return 1 if summary.lost or summary.wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a reply may take")
    parser.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays down")
    parser.add_argument("--seed", type=int, default=1, help="of the request mix")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests/s at most (0: as fast as answered)"
    )
    parser.add_argument("--no-warm-up", action="store_true", help="RSS baseline before any request")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    world = SoakWorld()
    try:
        target = world.start()
        print(
            f"soak: {args.requests} requests from {args.clients} clients, "
            f"{len(target.sessions)} sessions, nodes {' and '.join(NODES)}",
            file=sys.stderr,
        )
        return soak(world, target, args)
    finally:
        world.close()


if __name__ == "__main__":
    sys.exit(main())
