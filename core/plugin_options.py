"""Plugin options: the flags a plugin declares, their environment form, their types.

A plugin adds flags in ``pdcore_add_cli_args``; every flag it adds is recorded
as that plugin's option (keyed by the flag's ``dest``). The front end parses
them, reads ``PDCORE_<FLAG>`` / ``SGLANG_<FLAG>`` when a flag is not given
(``--example-tcp-timeout`` -> ``PDCORE_EXAMPLE_TCP_TIMEOUT``; the ``PDCORE_``
spelling wins, as in ``pdcore.envs``), runs ``pdcore_configure`` and stores the
result in ``ServerArgs.plugin_options``, which every engine process (TP and DP
ranks included) receives. Values must be str, int, float, bool, None or a list
of those, so they cross process boundaries as plain data.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from pdcore.errors import ConfigError

PLAIN_TYPES = (str, int, float, bool, type(None))
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class OptionRecorder:
    """Stands in for the parser a plugin's ``pdcore_add_cli_args`` receives:
    forwards every call and records the actions the plugin adds."""

    def __init__(self, parser, actions: list[argparse.Action]):
        self._parser = parser
        self._actions = actions

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = self._parser.add_argument(*args, **kwargs)
        if action.option_strings:
            self._actions.append(action)
            if action.help is not argparse.SUPPRESS:
                action.help = f"{action.help or ''} (env: {', '.join(env_names(action))})".strip()
        return action

    def add_argument_group(self, *args, **kwargs) -> OptionRecorder:
        return OptionRecorder(self._parser.add_argument_group(*args, **kwargs), self._actions)

    def add_mutually_exclusive_group(self, *args, **kwargs) -> OptionRecorder:
        group = self._parser.add_mutually_exclusive_group(*args, **kwargs)
        return OptionRecorder(group, self._actions)

    def __getattr__(self, name: str):
        return getattr(self._parser, name)


def flag_of(action: argparse.Action) -> str:
    """The flag users know the option by: its first long spelling."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings)[0]


def env_names(action: argparse.Action) -> tuple[str, str]:
    """``--example-tcp-timeout``: ``PDCORE_EXAMPLE_TCP_TIMEOUT``, ``SGLANG_EXAMPLE_TCP_TIMEOUT``."""
    suffix = flag_of(action).lstrip("-").replace("-", "_").upper()
    return f"PDCORE_{suffix}", f"SGLANG_{suffix}"


def apply_env_defaults(actions: list[argparse.Action], env: Mapping[str, str]) -> None:
    """Make each set variable the default of its flag (a flag on the command line wins).

    A value the flag would refuse is a ``ConfigError`` naming the variable and the flag.
    """
    for action in actions:
        for var in env_names(action):
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                action.default = _convert(action, raw.strip())
            except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
                raise ConfigError(var, f"invalid value {raw!r} for {flag_of(action)}: {e}") from e
            break


def _convert(action: argparse.Action, raw: str) -> Any:
    if action.nargs == 0:  # store_true / store_false / store_const
        word = raw.lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"expected one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
        return action.const if word in TRUE_WORDS else action.default
    if action.nargs in (None, "?"):
        return _one(action, raw)
    return [_one(action, part.strip()) for part in raw.split(",") if part.strip()]


def _one(action: argparse.Action, raw: str) -> Any:
    value = action.type(raw) if callable(action.type) else raw
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"choose one of {', '.join(map(str, action.choices))}")
    return value


def check_plain(flag: str, value: Any) -> Any:
    """``value`` as plain data (tuples become lists); anything else names ``flag``."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, PLAIN_TYPES) for v in value):
        return list(value)
    if isinstance(value, PLAIN_TYPES):
        return value
    raise ConfigError(
        flag,
        f"plugin option value {value!r} has type {type(value).__name__}; plugin options "
        "must be str, int, float, bool, None or a list of those",
    )
