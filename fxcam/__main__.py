"""``python -m fxcam``: the same as the ``fxcam`` command."""

import sys

from .cli import main

sys.exit(main())
