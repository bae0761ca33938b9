"""``python -m lfopt``: the command line (the same as the ``lfopt`` entry point)."""

import sys

from .cli import main

sys.exit(main())
