"""BackgroundQueue: a worker's low-priority thread for work nobody waits for yet.

Live frames and prefetched neighbours are prepared here, never on a job thread. The thread
is reniced (``nice_increment`` above the worker, on its own native thread id) and yields to
requests: it starts a task only when no request is running (`user_request` counts them).
Each task sits in a slot with a key, and a new task for a key replaces the old one: only the
newest frame of a directory matters when frames come faster than they can be reduced, and
the neighbours of the place a user left are dropped when the user moves on. Live slots go
before prefetch slots, oldest slot first. A slot of a kind with a minimum interval starts no
sooner than that after its last start: a detector faster than the cap has its frames in
between skipped (each new one replaces the waiting one), so a 100 Hz detector costs a watched
directory its cap's rate of reductions, not the detector's.

A request that arrives while a task runs may be waiting for that very task (the same frame,
single-flight in the cache): the running task gets the worker's own priority back until it
ends (the lowered thread would otherwise hold the request behind every other process of the
machine). Raising a thread's priority back needs RLIMIT_NICE, which the worker sets to its
own priority before it drops its privileges (`allow_priority_back`, as root with
CAP_SYS_RESOURCE). Where the kernel will not let it back, the thread is not lowered at all:
a lowered task that a request waits for is worse than one that only yields.

A task that raises is logged at DEBUG and forgotten: a half-written or corrupt frame fails
this task alone, and the user's own request meets (and reports) the same error if it asks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator

log = logging.getLogger(__name__)

Task = Callable[[], None]
LIVE = "live"
PREFETCH = "prefetch"
KINDS = (LIVE, PREFETCH)
NICE_INCREMENT = 10


class BackgroundQueue:
    """Keyed, replaceable slots of tasks run one at a time by one low-priority thread."""

    def __init__(
        self,
        *,
        nice_increment: int = NICE_INCREMENT,
        name: str = "live-work",
        min_interval_s: dict[str, float] | None = None,
    ) -> None:
        self.nice_increment = nice_increment
        self._min_interval_s = min_interval_s or {}
        self._last_start: dict[tuple[str, Hashable], float] = {}
        self._cond = threading.Condition()
        self._slots: dict[str, OrderedDict[Hashable, list[Task]]] = {
            kind: OrderedDict() for kind in KINDS
        }
        self._busy = 0
        self._is_running_task = False
        self._tid: int | None = None
        self._base_nice = 0
        self._is_closed = False
        self.done = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, kind: str, key: Hashable, tasks: list[Task]) -> None:
        """Replace slot ``key``'s pending tasks with ``tasks`` (run in order)."""
        with self._cond:
            slots = self._slots[kind]
            slots.pop(key, None)
            if tasks:
                slots[key] = list(tasks)
            self._cond.notify_all()

    def drop(self, kind: str, key: Hashable) -> None:
        self.put(kind, key, [])

    def pending(self, kind: str) -> dict[Hashable, int]:
        """How many tasks wait in each slot of ``kind``."""
        with self._cond:
            return {key: len(tasks) for key, tasks in self._slots[kind].items()}

    @contextlib.contextmanager
    def user_request(self) -> Iterator[None]:
        """Around a user's request: no background task starts while one runs."""
        with self._cond:
            self._busy += 1
            if self._is_running_task:
                self._set_nice(self._base_nice)  # it may hold what this request needs
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no task is pending or running (tests, benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._is_running_task and not any(self._slots.values()), timeout_s
            )

    def close(self) -> None:
        with self._cond:
            self._is_closed = True
            self._cond.notify_all()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        self._lower_priority()
        while True:
            with self._cond:
                while not self._can_start():
                    self._cond.wait(timeout=self._next_eligible_in())
                if self._is_closed:
                    return
                task = self._next_task()
                self._is_running_task = True
                self._set_nice(self._base_nice + self.nice_increment)
            try:
                task()
                self.done += 1
            except Exception as exc:  # this frame alone; the user's request reports its error
                self.failed += 1
                log.debug("live: background task failed: %s", exc, exc_info=True)
            finally:
                with self._cond:
                    self._is_running_task = False
                    self._cond.notify_all()

    def _can_start(self) -> bool:
        return self._is_closed or (self._busy == 0 and self._eligible() is not None)

    def _eligible(self) -> tuple[str, Hashable] | None:
        """The oldest slot allowed to start, live before prefetch (the caller holds the
        lock); None when none waits or every one is within its kind's interval."""
        now = time.monotonic()
        for kind in KINDS:
            interval = self._min_interval_s.get(kind, 0.0)
            for key in self._slots[kind]:
                if not interval or now - self._last_start.get((kind, key), -interval) >= interval:
                    return kind, key
        return None

    def _next_task(self) -> Task:
        """The first task of the eligible slot (the caller holds the lock and checked)."""
        found = self._eligible()
        assert found is not None
        kind, key = found
        tasks = self._slots[kind][key]
        task = tasks.pop(0)
        if not tasks:
            del self._slots[kind][key]
        if self._min_interval_s.get(kind):
            now = time.monotonic()
            self._last_start[(kind, key)] = now
            self._forget_old_starts(now)
        return task

    def _next_eligible_in(self) -> float | None:
        """Seconds until a slot held back by its interval may start (None: none is)."""
        now, soonest = time.monotonic(), None
        for kind, interval in self._min_interval_s.items():
            for key in self._slots[kind]:
                wait = self._last_start.get((kind, key), -interval) + interval - now
                soonest = wait if soonest is None else min(soonest, wait)
        return None if soonest is None else max(0.0, soonest)

    def _forget_old_starts(self, now: float) -> None:
        if len(self._last_start) > 256:
            longest = max(self._min_interval_s.values(), default=0.0)
            self._last_start = {k: t for k, t in self._last_start.items() if now - t < longest}

    def _lower_priority(self) -> None:
        """Renice this thread alone: on Linux a thread's native id is a process id to
        setpriority. Raising one's own nice value needs no privilege."""
        self._tid = threading.get_native_id()
        try:
            self._base_nice = os.getpriority(os.PRIO_PROCESS, self._tid)
        except OSError as exc:
            log.warning("live: cannot read the background thread's priority: %s", exc)
        if not _may_raise_back_to(self._base_nice):
            log.debug("live: no way back to the worker's priority; the thread only yields")
            self.nice_increment = 0
            return
        if not self._set_nice(self._base_nice + self.nice_increment):
            log.warning("live: cannot lower the background thread's priority")

    def _set_nice(self, nice: int) -> bool:
        """The background thread's nice value (the caller holds the lock or is the thread);
        False when the kernel refuses (a raise back without RLIMIT_NICE)."""
        if self._tid is None:
            return False
        try:
            os.setpriority(os.PRIO_PROCESS, self._tid, min(19, nice))
        except OSError:
            return False
        return True


def _may_raise_back_to(nice: int) -> bool:
    """Whether this process may set a thread's nice value back to ``nice`` once raised
    (root: CAP_SYS_NICE; otherwise RLIMIT_NICE must reach it)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    if os.geteuid() == 0 or soft == resource.RLIM_INFINITY:
        return True
    return 20 - soft <= nice


def allow_priority_back() -> None:
    """Let this process's threads return to its current priority after lowering it (for
    `BackgroundQueue`): RLIMIT_NICE at exactly that priority, never above it. Set it before
    dropping privileges; an unprivileged process cannot raise the limit (nor needs to: not
    started as root, a worker's background thread simply stays lowered)."""
    if os.geteuid() != 0:
        return
    ceiling = 20 - os.getpriority(os.PRIO_PROCESS, 0)
    try:
        resource.setrlimit(resource.RLIMIT_NICE, (ceiling, ceiling))
    except (OSError, ValueError) as exc:  # no CAP_SYS_RESOURCE (a container, say)
        log.debug("live: RLIMIT_NICE stays: %s", exc)
