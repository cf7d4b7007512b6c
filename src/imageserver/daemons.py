"""`imageserver proxy` and `imageserver serve`: the long-running commands, apart from the
rest of the CLI, so a broker loads no imaging stack (30 MiB resident instead of 229) and a
node's root manager no frame reader (it opens no image; its zygote, a program of its own,
loads them for the workers)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from imageserver.config import load_settings
from imageserver.errors import ImageServerError
from imageserver.logs import configure_logging

PROXY_HELP = "run the broker (clients in front, serve nodes behind)"
SERVE_HELP = "run a node: the process manager (root in production)"


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--front", action="append", help="client endpoint (repeatable)")
    parser.add_argument("--back", action="append", help="node endpoint (repeatable)")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")


def run_proxy(args: argparse.Namespace) -> int:
    from imageserver.transports.broker import run_broker

    settings = load_settings(args.config)
    configure_logging(settings.logging.level)
    run_broker(
        args.front or [settings.proxy.front_endpoint],
        args.back or [settings.proxy.back_endpoint],
        settings.broker,
        settings.metrics.broker,
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from imageserver.service.server import serve

    settings = load_settings(args.config)
    configure_logging(settings.logging.level)
    serve(settings)
    return 0


COMMANDS = {
    "proxy": (PROXY_HELP, add_proxy_arguments, run_proxy),
    "serve": (SERVE_HELP, add_serve_arguments, run_serve),
}


def main(command: str, argv: Sequence[str]) -> int:
    help_text, add_arguments, run = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"imageserver {command}", description=help_text)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except ImageServerError as exc:
        print(f"imageserver: error: {exc}", file=sys.stderr)
        return 2
