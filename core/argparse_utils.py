"""An ArgumentParser whose errors are one line naming the flag, not a usage wall."""

from __future__ import annotations

import argparse
import sys


class FlagParser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.stderr.write(
            f"{self.prog}: error: {message}\n(run '{self.prog} --help' for all flags)\n"
        )
        sys.exit(2)
