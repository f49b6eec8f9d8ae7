"""The ``pdcore`` console script: serve, router, up, bench, plugins."""

from __future__ import annotations

import argparse
import sys

from pdcore import __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="pdcore",
        description="LLM serving with prefill/decode disaggregation; backends are plugins.",
    )
    parser.add_argument("--version", action="version", version=f"pdcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {
        "serve": "start a server (same flags as python -m pdcore.launch_server)",
        "router": "start the PD router (same flags as python -m pdcore.launch_router)",
        "up": "start a local prefill/decode cluster with a router",
        "bench": "benchmark a running server or router",
        "plugins": "list platforms, attention and transfer backends and their availability",
    }
    for name, help_text in commands.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv)
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command not in commands:
        parser.error(f"unknown command {command!r}; choose one of: {', '.join(commands)}")
    if command == "serve":
        from pdcore.launch_server import run

        return run(rest, prog="pdcore serve")
    if command == "router":
        from pdcore.launch_router import run

        return run(rest, prog="pdcore router")
    if command == "up":
        from pdcore.up import run

        return run(rest, prog="pdcore up")
    if command == "plugins":
        return _plugins(rest)
    return _not_built(command, rest)


def _plugins(argv: list[str]) -> int:
    from pdcore.plugins_table import render
    from pdcore.registry import get_registry

    parser = argparse.ArgumentParser(prog="pdcore plugins", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    registry = get_registry()
    print(render(registry, as_json=args.json))
    return 1 if registry.conflicts() else 0


def _not_built(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"pdcore {command}")
    parser.parse_known_args(argv)  # honours --help
    print(
        f"pdcore {command}: not available in pdcore {__version__} yet (see the README's roadmap)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
