"""The front proxy: clients' REQ sockets on a ROUTER, image servers dialling in to a DEALER.

Data nodes connect out to the proxy (nothing dials into them), so the proxy binds both
sides. Several servers may connect; the DEALER spreads requests over them.
"""

from __future__ import annotations

import logging

import zmq

from imageserver.service.systemd import notify

log = logging.getLogger(__name__)


def run_proxy(
    front_endpoints: list[str], back_endpoints: list[str], context: zmq.Context | None = None
) -> None:
    """Bind and relay until the context is terminated (clean stop) or interrupted."""
    ctx = context or zmq.Context.instance()
    front = ctx.socket(zmq.ROUTER)
    back = ctx.socket(zmq.DEALER)
    try:
        for sock in (front, back):
            sock.setsockopt(zmq.LINGER, 0)
        for endpoint in front_endpoints:
            front.bind(endpoint)
        for endpoint in back_endpoints:
            back.bind(endpoint)
        log.info(
            "imageserver proxy ready: clients on %s, servers on %s",
            ", ".join(front_endpoints),
            ", ".join(back_endpoints),
        )
        notify("READY=1\nSTATUS=relaying")
        zmq.proxy(front, back)
    except zmq.ContextTerminated:
        log.info("proxy stopped")
    finally:
        front.close(0)
        back.close(0)
