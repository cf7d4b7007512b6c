"""The tuned allocator recycles a freed frame-sized buffer, in pool threads too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import resource, sys, threading
    import numpy as np
    from imageserver.allocator import tune_allocator

    if not tune_allocator():
        sys.exit(3)

    def faults_of_second_buffer(out):
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            buffer = np.empty(4148 * 4362, np.uint32)  # a 16M frame: 72 MB
            buffer.fill(1)
            del buffer
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    main, pool = [], []
    faults_of_second_buffer(main)
    thread = threading.Thread(target=faults_of_second_buffer, args=(pool,))
    thread.start()
    thread.join()
    print(main[0], pool[0])
    """
)


def test_a_freed_frame_buffer_is_reused_in_the_main_and_in_other_threads() -> None:
    # A fresh interpreter: the settings must come before any thread allocates.
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    if done.returncode == 3:
        pytest.skip("no glibc mallopt here")
    assert done.returncode == 0, done.stderr
    main_faults, thread_faults = map(int, done.stdout.split())
    # A fresh 72 MB buffer costs hundreds (2 MB pages) to 17,000 (4 KB pages) page faults.
    assert main_faults < 50
    assert thread_faults < 50


RELEASE_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from imageserver.allocator import release_free_memory, resident_bytes, tune_allocator

    if not tune_allocator():
        sys.exit(3)
    MiB = 1 << 20
    start = resident_bytes()
    views = []
    for i in range(96):  # a cache's worth of views, each followed by a small survivor
        view = np.ones(MiB + i * 4096, np.uint8)
        views.append((view, np.ones(100, np.uint8)))
    full = resident_bytes()
    views = [small for _, small in views]  # evicted: holes all over the heap
    freed = resident_bytes()
    if not release_free_memory():
        sys.exit(3)
    print((full - start) // MiB, (full - freed) // MiB, (freed - resident_bytes()) // MiB)
    """
)


def test_freed_memory_stays_resident_until_it_is_released() -> None:
    done = subprocess.run([sys.executable, "-c", RELEASE_CHILD], capture_output=True, text=True)
    if done.returncode == 3:
        pytest.skip("no glibc mallopt or malloc_trim here")
    assert done.returncode == 0, done.stderr
    grown, returned_on_free, released = map(int, done.stdout.split())
    assert grown >= 90
    assert returned_on_free < 8  # the tuning keeps freed buffers for the next frame
    assert released >= 0.9 * grown
