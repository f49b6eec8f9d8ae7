"""``python -m pdcore.launch_router``: sglang_router's flags for the PD router."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from pdcore.argparse_utils import DefaultsShown, FlagParser
from pdcore.body_limit import DEFAULT_MAX_PAYLOAD_SIZE
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
    # cache_aware's knobs, with sgl-router's defaults
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    max_retries: int = 2
    health_check_interval_secs: float = 5.0
    health_check_timeout_secs: float = 5.0
    cb_failure_threshold: int = 3
    cb_cooldown_secs: float = 10.0
    log_level: str = "info"
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
    # never in a repr, a log line or --check-config output
    api_key: str | None = field(default=None, repr=False)
    worker_api_key: str | None = field(default=None, repr=False)
    admin_api_key: str | None = field(default=None, repr=False)

    @property
    def workers_key(self) -> str | None:
        """The key the router sends to workers: --worker-api-key, else (as SGLang's
        router) its own --api-key."""
        return self.worker_api_key or self.api_key

    @property
    def admin_key(self) -> str | None:
        """The credential of the worker-management routes: --admin-api-key, else --api-key."""
        return self.admin_api_key or self.api_key

    def public(self) -> dict:
        """The args as a dict with the keys masked, for --check-config and info routes."""
        out = asdict(self)
        for name in ("api_key", "worker_api_key", "admin_api_key"):
            out[name] = "***" if out[name] else None
        return out

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """sgl-router's flag names and meanings where it has them; every default shown."""
        d = RouterArgs
        g = parser.add_argument_group("workers")
        g.add_argument(
            "--pd-disaggregation",
            action="store_true",
            help="route each request to a prefill and a decode worker (with --prefill/--decode)",
        )
        g.add_argument(
            "--prefill",
            nargs="+",
            action="append",
            default=[],
            metavar=("URL", "BOOTSTRAP_PORT"),
            help="prefill worker URL and its bootstrap port (a port, 'none' or omitted: "
            "asked from the worker's /get_server_info); repeat for each prefill "
            "(default: none)",
        )
        g.add_argument(
            "--decode",
            nargs=1,
            action="append",
            default=[],
            metavar="URL",
            help="decode worker URL; repeat for each decode (default: none)",
        )
        g.add_argument(
            "--worker-urls",
            nargs="+",
            default=[],
            metavar="URL",
            help="workers of a regular (non-PD) router (default: none)",
        )
        g = parser.add_argument_group("HTTP server")
        g.add_argument(
            "--host",
            default=d.host,
            help="address to listen on; 0.0.0.0 or :: for every interface (sgl-router "
            "listens on 0.0.0.0 unless told; pdcore stays on loopback)",
        )
        g.add_argument("--port", type=int, default=d.port, help="port to listen on")
        g.add_argument(
            "--max-payload-size",
            "--max-request-body-bytes",
            dest="max_payload_size",
            type=int,
            default=d.max_payload_size,
            help="largest request body in bytes; a larger one is refused with 413 before it "
            "is read in full (default: 64 MiB)",
        )
        g.add_argument(
            "--log-level",
            default=d.log_level,
            choices=("debug", "info", "warn", "warning", "error", "critical"),
            help="the router's log level (warn = warning, sgl-router's name)",
        )
        g = parser.add_argument_group("routing policy")
        g.add_argument(
            "--policy",
            default=d.policy,
            choices=POLICIES,
            help="how a worker is picked; in PD mode for prefill and decode unless "
            "--prefill-policy/--decode-policy say otherwise",
        )
        g.add_argument(
            "--prefill-policy",
            choices=POLICIES,
            default=None,
            help="policy for prefill workers in PD mode (default: --policy)",
        )
        g.add_argument(
            "--decode-policy",
            choices=POLICIES,
            default=None,
            help="policy for decode workers in PD mode (default: --policy)",
        )
        g.add_argument(
            "--cache-threshold",
            type=float,
            default=d.cache_threshold,
            help="cache_aware: a request goes to the worker that served its longest cached "
            "prefix when that prefix is more than this fraction of the prompt; otherwise to "
            "the worker with the least cached text",
        )
        g.add_argument(
            "--balance-abs-threshold",
            type=int,
            default=d.balance_abs_threshold,
            help="cache_aware: loads count as imbalanced when the busiest worker has more "
            "than this many more than the idlest, and --balance-rel-threshold holds too; "
            "then the least loaded worker is picked. A worker's load: this router's requests "
            "in flight on it plus the running and waiting ones it reported at its last "
            "health check",
        )
        g.add_argument(
            "--balance-rel-threshold",
            type=float,
            default=d.balance_rel_threshold,
            help="cache_aware: loads count as imbalanced when the busiest worker has more "
            "than this times the idlest's load, and --balance-abs-threshold holds too",
        )
        g = parser.add_argument_group("retries, health checks, circuit breaker")
        g.add_argument(
            "--max-retries",
            "--retry-max-retries",
            type=int,
            default=d.max_retries,
            help="retries on a new worker pair after a connection error or 5xx (before the "
            "first byte reached the client)",
        )
        g.add_argument(
            "--health-check-interval-secs",
            type=float,
            default=d.health_check_interval_secs,
            help="seconds between health checks (GET /health, then /get_server_info for "
            "load and PD stats) of every worker",
        )
        g.add_argument(
            "--health-check-timeout-secs",
            type=float,
            default=d.health_check_timeout_secs,
            help="seconds a health check may take before it counts as a failure",
        )
        g.add_argument(
            "--cb-failure-threshold",
            "--health-failure-threshold",
            type=int,
            default=d.cb_failure_threshold,
            help="consecutive failures (requests or health checks) that take a worker out",
        )
        g.add_argument(
            "--cb-timeout-duration-secs",
            dest="cb_cooldown_secs",
            metavar="SECS",
            type=float,
            default=d.cb_cooldown_secs,
            help="seconds before an unhealthy worker may be tried again by a request",
        )
        g = parser.add_argument_group("API keys")
        g.add_argument(
            "--api-key",
            default=None,
            help="require 'Authorization: Bearer KEY' from clients (all routes but /health, "
            "/liveness, /readiness, /health_generate, /metrics); also the admin key unless "
            "--admin-api-key is given, and sent to workers unless --worker-api-key is given "
            "(default: none, no key needed)",
        )
        g.add_argument(
            "--worker-api-key",
            default=None,
            help="the --api-key of the workers, sent on every call to them (requests, aborts, "
            "health checks); default: --api-key",
        )
        g.add_argument(
            "--admin-api-key",
            default=None,
            help="require 'Authorization: Bearer KEY' on /add_worker, /remove_worker, "
            "/start_profile and /stop_profile (default: --api-key). Without either, those "
            "routes answer 403 unless the router listens on a loopback address and holds no "
            "--worker-api-key",
        )

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
        tuning = {
            name: getattr(ns, name)
            for name in (
                "cache_threshold",
                "balance_abs_threshold",
                "balance_rel_threshold",
                "max_retries",
                "health_check_interval_secs",
                "health_check_timeout_secs",
                "cb_failure_threshold",
                "cb_cooldown_secs",
                "log_level",
                "api_key",
                "worker_api_key",
                "admin_api_key",
                "max_payload_size",
            )
        }
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
            **tuning,
        )

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError("--port", f"must be a TCP port in 1..65535, got {self.port}")
        if not 0 <= self.cache_threshold <= 1:
            raise ConfigError("--cache-threshold", f"must be in 0..1, got {self.cache_threshold}")
        if self.balance_abs_threshold < 0:
            raise ConfigError(
                "--balance-abs-threshold", f"must be >= 0, got {self.balance_abs_threshold}"
            )
        if self.balance_rel_threshold < 1:
            raise ConfigError(
                "--balance-rel-threshold", f"must be >= 1, got {self.balance_rel_threshold}"
            )
        if self.max_retries < 0:
            raise ConfigError("--max-retries", f"must be >= 0, got {self.max_retries}")
        if self.max_payload_size < 1:
            raise ConfigError("--max-payload-size", f"must be >= 1, got {self.max_payload_size}")
        if self.cb_failure_threshold < 1:
            raise ConfigError("--cb-failure-threshold", "must be >= 1")
        for flag, value in (
            ("--health-check-interval-secs", self.health_check_interval_secs),
            ("--health-check-timeout-secs", self.health_check_timeout_secs),
        ):
            if value <= 0:
                raise ConfigError(flag, f"must be > 0, got {value}")
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


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = FlagParser(
        prog=prog,
        description="Start the pdcore router (sgl-router's flags and HTTP API).",
        formatter_class=DefaultsShown,
    )
    RouterArgs.add_cli_args(parser)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the flags, print the resolved config, exit",
    )
    return parser


def parse_router_args(argv: list[str], prog: str) -> tuple[RouterArgs, bool]:
    parser = build_parser(prog)
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
        print(json.dumps(args.public(), indent=2))
        return 0
    return serve(args)


def serve(args: RouterArgs) -> int:
    """Run the router until SIGINT/SIGTERM (uvicorn's graceful shutdown)."""
    import asyncio
    import logging

    import uvicorn

    from pdcore.listen import listen_socket
    from pdcore.router.app import build_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:  # taken before uvicorn starts: a busy port is one line, not uvicorn's log
        sock = listen_socket(args.host, args.port, "--port")
    except ConfigError as e:
        print(
            f"pdcore router: error: {e} (choose another --port, or --host)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    app = build_app(args)
    url = f"http://{args.host}:{args.port}"

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                self.announcer = asyncio.create_task(_announce_ready(app.readiness, url))

        async def shutdown(self, sockets=None) -> None:
            announcer = getattr(self, "announcer", None)
            if announcer is not None:
                announcer.cancel()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http=_pick("httptools", "h11"),
        loop=_pick("uvloop", "asyncio"),
    )
    server = _Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1


READY_POLL_S = 0.2


async def _announce_ready(readiness, url: str) -> None:
    """Print "router ready on URL" once it can route; until then, what it waits for."""
    import asyncio

    state = readiness()
    if not state.ready:
        print(
            f"router listening on {url}; not ready yet: {state.message} (waiting for "
            "health checks; /health answers 503 until then)",
            file=sys.stderr,
            flush=True,
        )
        while not state.ready:
            await asyncio.sleep(READY_POLL_S)
            state = readiness()
    print(f"router ready on {url}", file=sys.stderr, flush=True)


def _pick(fast: str, fallback: str) -> str:
    """uvicorn's C-based HTTP parser / event loop when installed (a third of the cost)."""
    import importlib.util

    return fast if importlib.util.find_spec(fast) is not None else fallback


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
