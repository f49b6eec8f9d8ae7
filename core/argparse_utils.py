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


class DefaultsShown(argparse.HelpFormatter):
    """Ends each option's help with its default, unless the help already says it
    ("default: --api-key"); flags read "(default: off)", unset values "(default: none)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if not action.option_strings:
            return text
        if isinstance(action.default, bool):
            shown = "on" if action.default else "off"
        elif action.default in (None, [], ()):
            shown = "none"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"
