"""``python -m seqdsl`` is the ``seqdsl`` command."""

import sys

from .cli import main

sys.exit(main())
