"""systemd's readiness protocol (``Type=notify``) without libsystemd: one datagram.

Under systemd, ``$NOTIFY_SOCKET`` names a Unix datagram socket (``@`` for the abstract
namespace); ``READY=1`` sent there tells systemd the service is up, so units ordered after
it start only then. Elsewhere the variable is unset and this does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)
NOTIFY_ENV = "NOTIFY_SOCKET"


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not under systemd."""
    address = os.environ.get(NOTIFY_ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", os.environ[NOTIFY_ENV], exc)
        return False
    return True
