"""`imageserver proxy`: the broker's command, apart from the rest of the CLI so a broker
loads no imaging stack (27 MiB resident instead of 227)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from imageserver.config import load_settings
from imageserver.errors import ImageServerError
from imageserver.logs import configure_logging
from imageserver.transports.broker import run_broker

HELP = "run the broker (clients in front, serve nodes behind)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--front", action="append", help="client endpoint (repeatable)")
    parser.add_argument("--back", action="append", help="node endpoint (repeatable)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.logging.level)
    run_broker(
        args.front or [settings.proxy.front_endpoint],
        args.back or [settings.proxy.back_endpoint],
        settings.broker,
        settings.metrics.broker,
    )
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="imageserver proxy", description=HELP)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except ImageServerError as exc:
        print(f"imageserver: error: {exc}", file=sys.stderr)
        return 2
