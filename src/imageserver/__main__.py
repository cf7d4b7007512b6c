"""`python -m imageserver` and the `imageserver` console script."""

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["proxy"]:  # the broker alone: no imaging stack in its memory
        from imageserver import proxy_command

        return proxy_command.main(args[1:])
    from imageserver.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
