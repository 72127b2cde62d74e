"""``python -m periodic``: the ``periodic`` command (see the "The periodic command" docs page)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
