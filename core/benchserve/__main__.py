"""``python -m pdcore.benchserve`` is ``pdcore bench serving``."""

import sys

from pdcore.benchserve.cli import run

sys.exit(run(sys.argv[1:], prog="python -m pdcore.benchserve"))
