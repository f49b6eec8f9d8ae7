"""``python -m pdcore`` is the ``pdcore`` console script."""

import sys

from pdcore.cli import main

sys.exit(main())
