"""`python -m imageserver` and the `imageserver` console script."""

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["proxy"], ["serve"]):  # the daemons: no imaging stack in their memory
        from imageserver import daemons

        return daemons.main(args[0], args[1:])
    from imageserver.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
