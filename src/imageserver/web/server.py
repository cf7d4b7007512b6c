"""`imageserver web`: bind the listening socket, then run the gateway app under uvicorn."""

from __future__ import annotations

import logging
import socket

import uvicorn

from imageserver.config import Settings
from imageserver.metrics import start_metrics_server
from imageserver.service.systemd import notify
from imageserver.web.app import create_app

log = logging.getLogger(__name__)


def listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def run_gateway(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM. The socket is bound before READY=1, so no request is
    refused between "ready" and the first accept."""
    host, port = listen_address(settings.web.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=512)
    start_metrics_server(settings.metrics.web, "web")

    def ready() -> None:
        bound_host, bound_port = sock.getsockname()[:2]
        log.info(
            "imageserver web ready: http://%s:%d/ → chain at %s",
            bound_host,
            bound_port,
            settings.proxy.front_endpoint,
        )
        notify("READY=1\nSTATUS=serving")

    config = uvicorn.Config(
        create_app(settings, on_ready=ready),
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
