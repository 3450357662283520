"""``python -m retrieval``: the same as the ``crossmodal`` command."""

import sys

from .cli import main

sys.exit(main())
