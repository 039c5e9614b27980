"""``python -m dpddpm``: the same command line as ``dpddpm``."""

import sys

from .cli import main

sys.exit(main())
