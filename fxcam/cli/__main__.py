"""``python -m fxcam.cli``: the same as the ``fxcam`` command."""

import sys

from . import main

sys.exit(main())
