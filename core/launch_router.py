"""``python -m pdcore.launch_router``: sglang_router's flags for the PD router."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from pdcore.argparse_utils import FlagParser
from pdcore.errors import ConfigError

POLICIES = ("random", "round_robin", "power_of_two", "cache_aware")


@dataclass
class WorkerSpec:
    url: str
    bootstrap_port: int | None = None


@dataclass
class RouterArgs:
    pd_disaggregation: bool = False
    prefill: list[WorkerSpec] = field(default_factory=list)
    decode: list[WorkerSpec] = field(default_factory=list)
    worker_urls: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 30000
    policy: str = "cache_aware"
    prefill_policy: str | None = None
    decode_policy: str | None = None

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--pd-disaggregation",
            action="store_true",
            help="route each request to a prefill and a decode worker",
        )
        parser.add_argument(
            "--prefill",
            nargs="+",
            action="append",
            default=[],
            metavar=("URL", "BOOTSTRAP_PORT"),
            help="prefill worker URL and optional bootstrap port (repeatable)",
        )
        parser.add_argument(
            "--decode",
            nargs=1,
            action="append",
            default=[],
            metavar="URL",
            help="decode worker URL (repeatable)",
        )
        parser.add_argument(
            "--worker-urls",
            nargs="+",
            default=[],
            metavar="URL",
            help="workers of a regular (non-PD) router",
        )
        parser.add_argument("--host", default=RouterArgs.host)
        parser.add_argument("--port", type=int, default=RouterArgs.port)
        parser.add_argument("--policy", default=RouterArgs.policy, choices=POLICIES)
        parser.add_argument("--prefill-policy", choices=POLICIES, default=None)
        parser.add_argument("--decode-policy", choices=POLICIES, default=None)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace) -> RouterArgs:
        prefill = []
        for item in ns.prefill:
            if len(item) > 2:
                raise ConfigError("--prefill", f"expected URL [BOOTSTRAP_PORT], got {item}")
            port = None
            if len(item) == 2 and item[1].lower() != "none":
                if not item[1].isdigit() or not 1 <= int(item[1]) <= 65535:
                    raise ConfigError("--prefill", f"bootstrap port must be 1..65535: {item[1]!r}")
                port = int(item[1])
            prefill.append(WorkerSpec(_check_url(item[0], "--prefill"), port))
        decode = [WorkerSpec(_check_url(u[0], "--decode")) for u in ns.decode]
        workers = [_check_url(u, "--worker-urls") for u in ns.worker_urls]
        return cls(
            ns.pd_disaggregation,
            prefill,
            decode,
            workers,
            ns.host,
            ns.port,
            ns.policy,
            ns.prefill_policy,
            ns.decode_policy,
        )

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError("--port", f"must be a TCP port in 1..65535, got {self.port}")
        if self.pd_disaggregation:
            if self.worker_urls:
                raise ConfigError(
                    "--worker-urls", "use --prefill/--decode with --pd-disaggregation"
                )
            if not self.prefill:
                raise ConfigError("--prefill", "--pd-disaggregation needs at least one")
            if not self.decode:
                raise ConfigError("--decode", "--pd-disaggregation needs at least one")
        else:
            if self.prefill or self.decode:
                raise ConfigError(
                    "--pd-disaggregation", "is required when --prefill/--decode are given"
                )
            if self.prefill_policy or self.decode_policy:
                raise ConfigError("--prefill-policy", "only applies with --pd-disaggregation")


def _check_url(url: str, flag: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(flag, f"expected an http(s)://HOST:PORT URL, got {url!r}")
    try:
        parsed.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError(flag, f"bad port in {url!r}") from None
    return url.rstrip("/")


def parse_router_args(argv: list[str], prog: str) -> tuple[RouterArgs, bool]:
    parser = FlagParser(prog=prog, description="Start the pdcore router.")
    RouterArgs.add_cli_args(parser)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the flags, print the resolved config, exit",
    )
    ns = parser.parse_args(argv)
    try:
        args = RouterArgs.from_cli_args(ns)
        args.validate()
    except ConfigError as e:
        parser.error(str(e))
    return args, ns.check_config


def run(argv: list[str], prog: str = "python -m pdcore.launch_router") -> int:
    args, check_only = parse_router_args(argv, prog)
    if check_only:
        print(json.dumps(asdict(args), indent=2))
        return 0
    print(
        f"{prog}: configuration is valid, but the router is not part of this build yet; "
        "use --check-config to validate a configuration.",
        file=sys.stderr,
    )
    return 2


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
