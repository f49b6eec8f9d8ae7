"""The ``pdcore`` console script: serve, router, up, bench serving, plugins."""

from __future__ import annotations

import argparse
import sys

from pdcore import __version__
from pdcore.argparse_utils import FlagParser


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
    if command == "bench":
        return _bench(rest)
    return _plugins(rest)


def _plugins(argv: list[str]) -> int:
    from pdcore.launch_server import build_parser
    from pdcore.plugins_table import render
    from pdcore.registry import get_registry

    parser = argparse.ArgumentParser(prog="pdcore plugins", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    registry = get_registry()
    build_parser(registry, "pdcore serve")  # a plugin whose flags fail there is FAILED too
    print(render(registry, as_json=args.json))
    return 1 if registry.warnings() else 0  # a name conflict or a plugin that failed


BENCHMARKS = {
    "serving": "load a running server or router; TTFT, ITL, TPOT, E2E, throughput, goodput",
}


def _bench(argv: list[str]) -> int:
    """``pdcore bench KIND ...``; a missing or unknown KIND is a usage error (exit 2)."""
    parser = FlagParser(prog="pdcore bench", description="Benchmarks of a running deployment.")
    sub = parser.add_subparsers(dest="kind", metavar="BENCHMARK")
    for name, help_text in BENCHMARKS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if not argv:
        parser.error(f"which benchmark? choose one of: {', '.join(BENCHMARKS)}")
    if argv[0] not in BENCHMARKS:
        parser.error(f"unknown benchmark {argv[0]!r}; choose one of: {', '.join(BENCHMARKS)}")
    from pdcore.benchserve import run

    return run(argv[1:], prog="pdcore bench serving")


if __name__ == "__main__":
    sys.exit(main())
