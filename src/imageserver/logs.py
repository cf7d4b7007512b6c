"""Logging to stderr and, where a syslog socket exists, to syslog/journald."""

from __future__ import annotations

import logging
import logging.handlers
import os

_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
_SYSLOG_SOCKET = "/dev/log"


def configure_logging(level: str = "INFO", *, to_syslog: bool = True) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(stderr)
    if to_syslog and os.path.exists(_SYSLOG_SOCKET):
        try:
            syslog = logging.handlers.SysLogHandler(address=_SYSLOG_SOCKET)
        except OSError:
            return
        syslog.ident = "imageserver: "
        syslog.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(syslog)
