"""``python -m pdcore.launch_server``: SGLang's launch_server flags, pdcore's backends."""

from __future__ import annotations

import argparse
import json
import sys

from pdcore.argparse_utils import FlagParser
from pdcore.config import ServerArgs
from pdcore.envs import DisaggregationEnv, disaggregation_secret
from pdcore.errors import PdcoreError
from pdcore.registry import Registry, get_registry


def build_parser(registry: Registry, prog: str) -> argparse.ArgumentParser:
    parser = FlagParser(prog=prog, description="Start a pdcore server.")
    ServerArgs.add_cli_args(parser)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate flags, environment and backends, print the resolved config, exit",
    )
    plugin_group = parser.add_argument_group("plugin options")
    registry.add_cli_args(plugin_group)
    return parser


def parse_server_args(
    argv: list[str], registry: Registry | None = None, prog: str = "pdcore serve"
) -> tuple[ServerArgs, argparse.Namespace]:
    """Parse and validate; exits with status 2 and a flag-naming message on error."""
    registry = registry or get_registry()
    parser = build_parser(registry, prog)
    try:  # plugin flags not given on the command line: PDCORE_<FLAG> / SGLANG_<FLAG>
        registry.apply_env_defaults()
    except PdcoreError as e:
        parser.error(str(e))
    ns = parser.parse_args(argv)
    check_only = ns.__dict__.pop("check_config")
    args = ServerArgs.from_cli_args(ns)
    try:
        args.validate(registry)
        if args.disaggregation_mode != "null":
            DisaggregationEnv.from_env()
        # Fixed now (flag, else environment): a bad variable fails here, and
        # /get_server_info shows the value in effect.
        args.disaggregation_local_prefill_threshold = args.local_prefill_threshold
    except PdcoreError as e:
        parser.error(str(e))
    ns.check_config = check_only
    return args, ns


def run(argv: list[str], prog: str = "python -m pdcore.launch_server") -> int:
    registry = get_registry()
    args, ns = parse_server_args(argv, registry, prog)
    resolved = args.resolved(registry)
    if args.disaggregation_mode != "null":
        resolved["disaggregation_env"] = vars(DisaggregationEnv.from_env())
        secret = args.disaggregation_secret or disaggregation_secret()
        resolved["disaggregation_secret"] = "***" if secret else None
    if ns.check_config:
        # what the server would log at start: failed plugins and name conflicts
        resolved["plugin_warnings"] = registry.warnings()
        for line in resolved["plugin_warnings"]:
            print(f"pdcore: warning: {line}", file=sys.stderr)
        print(json.dumps(resolved, indent=2, default=str))
        return 0
    from pdcore.server.launch import serve, serve_follower_node

    if args.node_rank > 0:
        return serve_follower_node(args)
    return serve(args, server_info=resolved)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
