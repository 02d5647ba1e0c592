"""``python -m nexus.localnode``: the same as ``nexus localnode``."""

import sys

from nexus.localnode.cli import main

sys.exit(main())
