"""A read-only FUSE mirror of a directory whose reads of chosen files hang, like a file server
that stopped answering. Real kernel, real file system: the worker's read() blocks in the
kernel exactly as on a hung NFS mount, with no hook in the code under test. (A lease from
fcntl F_SETLEASE would not do: the readers open with O_NONBLOCK and get EAGAIN at once.)

``python hung_fs.py SOURCE MOUNTPOINT CONTROL`` serves until unmounted. A read of ``name``
blocks while ``CONTROL/hold-<name>`` exists and proceeds once it is removed.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mfusepy


class HungMirror(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, source: Path, control: Path) -> None:
        self.source = source
        self.control = control

    def _path(self, path: str) -> Path:
        return self.source / path.lstrip("/")

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._path(path))
        except FileNotFoundError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        keys = ("st_mode", "st_uid", "st_gid", "st_size", "st_nlink")
        times = ("st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        attributes = {key: getattr(st, key) for key in keys}
        attributes.update({key[:-3]: getattr(st, key) for key in times})
        return attributes

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        hold = self.control / f"hold-{Path(path).name}"
        while hold.exists():
            time.sleep(0.02)
        with self._path(path).open("rb") as stream:
            stream.seek(offset)
            return stream.read(size)


def main(argv: list[str]) -> None:
    source, mountpoint, control = (Path(arg) for arg in argv)
    mfusepy.FUSE(
        HungMirror(source, control),
        str(mountpoint),
        foreground=True,
        ro=True,
        allow_other=True,
        default_permissions=True,
        nothreads=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])


class HungMount:
    """The mirror of ``source`` mounted in a fresh directory by a subprocess, for a test."""

    def __init__(self, source: Path, base: Path) -> None:
        self.source = source
        self.mountpoint = base / "mnt"
        self.control = base / "control"
        self.mountpoint.mkdir(parents=True)
        self.control.mkdir()
        for directory in (base, self.mountpoint):
            directory.chmod(0o755)  # the workers' users must reach the mount
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HungMount:
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(self.source), str(self.mountpoint), str(self.control)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mountpoint):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the FUSE mirror did not mount: {self._stderr()}")
            time.sleep(0.05)
        return self

    def hold(self, name: str) -> Path:
        """From now on, reads of ``name`` hang; returns its path in the mount."""
        (self.control / f"hold-{name}").touch()
        return self.mountpoint / name

    def release(self, name: str) -> None:
        (self.control / f"hold-{name}").unlink(missing_ok=True)

    def __exit__(self, *_exc: object) -> None:
        for hold in self.control.glob("hold-*"):
            hold.unlink()
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=30)
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            if self._process.stderr is not None:
                self._process.stderr.close()

    def _stderr(self) -> str:
        if self._process is None or self._process.stderr is None or self._process.poll() is None:
            return ""
        return self._process.stderr.read().decode(errors="replace")
