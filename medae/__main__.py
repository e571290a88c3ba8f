"""``python -m medae`` (used by torchrun) is the same as the ``medae`` command."""

import sys

from medae.cli import main

if __name__ == "__main__":
    sys.exit(main())
