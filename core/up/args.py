"""``pdcore up`` flags; a bad one is a one-line error naming it, before anything starts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pdcore.argparse_utils import FlagParser
from pdcore.listen import port_busy
from pdcore.up.plan import flag_value

# Defaults the servers get before the user's own flags (so a user's flag wins).
SERVER_DEFAULTS = ("--device", "cpu", "--max-total-tokens", "8192", "--log-level", "warning")
EXAMPLE_QUESTION = "What is the capital of France? Answer in one sentence."


@dataclass
class UpArgs:
    num_prefill: int = 1
    num_decode: int = 1
    model_path: str | None = None
    transfer_backend: str = "mooncake"
    host: str = "127.0.0.1"
    port: int | None = 30000  # None: any free port (--once without --port)
    server_args: list[str] = field(default_factory=list)
    router_args: list[str] = field(default_factory=list)
    once: str | None = None
    max_tokens: int = 64
    timeout: float = 300.0
    grace: float = 15.0
    api_key: str | None = field(default=None, repr=False)
    base_gpu_id: int = 0
    prefill_base_gpu_id: int | None = None
    decode_base_gpu_id: int | None = None

    def server_flag(self, *names: str) -> str | None:
        """What the servers get for a flag: the user's value, else pdcore up's default."""
        return flag_value([*SERVER_DEFAULTS, *self.server_args], *names)


def _parser(prog: str) -> FlagParser:
    p = FlagParser(
        prog=prog,
        description="Start N prefill + M decode servers and a PD router on this machine; "
        "Ctrl-C stops them all.",
        epilog=f"Servers get {' '.join(SERVER_DEFAULTS)} unless --server-args (or flags "
        "after --) say otherwise; everything after -- goes to every server.",
    )
    p.add_argument(
        "--prefill",
        "--num-prefill",
        dest="num_prefill",
        type=int,
        default=1,
        metavar="N",
        help="prefill servers (default 1)",
    )
    p.add_argument(
        "--decode",
        "--num-decode",
        dest="num_decode",
        type=int,
        default=1,
        metavar="M",
        help="decode servers (default 1)",
    )
    p.add_argument(
        "--model-path",
        "--model",
        default=None,
        help="HF folder or .gguf file (default: the embedded SmolLM2-135M)",
    )
    p.add_argument(
        "--transfer-backend",
        "--disaggregation-transfer-backend",
        default="mooncake",
        help="KV transfer plugin: mooncake (default), nixl, ...",
    )
    p.add_argument("--host", default="127.0.0.1", help="router host (servers stay on 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="router port (default 30000; with --once, any free port)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on the router and every server "
        "(the router sends it to the servers)",
    )
    p.add_argument(
        "--base-gpu-id",
        type=int,
        default=0,
        metavar="N",
        help="first GPU of the first server (default 0); servers get consecutive blocks "
        "of --tp-size GPUs, prefills then decodes. Only with a GPU --device in the server "
        "flags; on the CPU no GPU is assigned",
    )
    p.add_argument(
        "--prefill-base-gpu-id",
        type=int,
        default=None,
        metavar="N",
        help="first GPU of the prefill servers (default: --base-gpu-id)",
    )
    p.add_argument(
        "--decode-base-gpu-id",
        type=int,
        default=None,
        metavar="N",
        help="first GPU of the decode servers (default: right after the prefill servers' GPUs)",
    )
    p.add_argument(
        "--server-args",
        default="",
        metavar="'FLAGS'",
        help="extra flags for every server, one quoted string",
    )
    p.add_argument(
        "--router-args",
        default="",
        metavar="'FLAGS'",
        help="extra flags for the router, one quoted string",
    )
    p.add_argument(
        "--once",
        nargs="?",
        const=EXAMPLE_QUESTION,
        default=None,
        metavar="QUESTION",
        help="ask one chat question through the router, print the answer, stop everything",
    )
    p.add_argument("--max-tokens", type=int, default=64, help="answer length for --once")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for everything to be ready (default 300)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="seconds a process gets to stop before it is killed (default 15)",
    )
    return p


def parse_up_args(argv: list[str], prog: str = "pdcore up") -> UpArgs:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = _parser(prog)
    ns = parser.parse_args(argv)
    try:
        server_args = shlex.split(ns.server_args) + extra
        router_args = shlex.split(ns.router_args)
    except ValueError as e:
        parser.error(f"--server-args/--router-args: {e}")
    args = UpArgs(
        ns.num_prefill,
        ns.num_decode,
        ns.model_path,
        ns.transfer_backend,
        ns.host,
        ns.port if ns.port is not None else (None if ns.once is not None else 30000),
        server_args,
        router_args,
        ns.once,
        ns.max_tokens,
        ns.timeout,
        ns.grace,
        ns.api_key or None,
        ns.base_gpu_id,
        ns.prefill_base_gpu_id,
        ns.decode_base_gpu_id,
    )
    problem = _check(args)
    if problem:
        parser.error(problem)
    return args


def _check(args: UpArgs) -> str | None:
    for flag, value in (
        ("--prefill", args.num_prefill),
        ("--decode", args.num_decode),
        ("--max-tokens", args.max_tokens),
    ):
        if value < 1:
            return f"{flag}: must be >= 1, got {value}"
    for flag, value in (("--timeout", args.timeout), ("--grace", args.grace)):
        if value <= 0:
            return f"{flag}: must be > 0, got {value}"
    for flag, value in (
        ("--base-gpu-id", args.base_gpu_id),
        ("--prefill-base-gpu-id", args.prefill_base_gpu_id),
        ("--decode-base-gpu-id", args.decode_base_gpu_id),
    ):
        if value is not None and value < 0:
            return f"{flag}: must be >= 0, got {value}"
    if flag_value(args.server_args, "--base-gpu-id") is not None:
        return (
            "--server-args: --base-gpu-id is set per server by pdcore up; "
            "use pdcore up --base-gpu-id (or --prefill-base-gpu-id/--decode-base-gpu-id)"
        )
    for flag in ("--tp-size", "--gpu-id-step"):
        value = args.server_flag(flag, "--tp") if flag == "--tp-size" else args.server_flag(flag)
        if value is not None and not (value.isdigit() and int(value) >= 1):
            return f"--server-args: {flag} must be a whole number >= 1, got {value!r}"
    if args.port is None:
        return None
    if not 1 <= args.port <= 65535:
        return f"--port: must be a TCP port in 1..65535, got {args.port}"
    busy = port_busy(args.host, args.port)
    if busy:
        return f"--port: {args.host}:{args.port} is not free ({busy}); pick another with --port"
    return None
