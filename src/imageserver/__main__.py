"""`python -m imageserver` and the `imageserver` console script."""

import sys

from imageserver.cli import main

if __name__ == "__main__":
    sys.exit(main())
