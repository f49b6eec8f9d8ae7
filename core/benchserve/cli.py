"""``pdcore bench serving`` flags (SGLang's bench_serving names where they exist) and
the entry point: bad flags exit 2 naming the flag, an unreachable server exits 1 with
one line, never a traceback."""

from __future__ import annotations

import json
import math
import sys

from pdcore.argparse_utils import FlagParser
from pdcore.benchserve import plots
from pdcore.benchserve.client import ServerError
from pdcore.envs import profiler_dir
from pdcore.errors import ConfigError

BACKENDS = ("sglang", "openai")
DATASETS = ("random", "sharegpt", "synthetic-conversations")


def build_parser(prog: str) -> FlagParser:
    p = FlagParser(
        prog=prog,
        description="Benchmark a running pdcore/SGLang server or PD router over HTTP: "
        "TTFT, ITL, TPOT, E2E latency, throughput and goodput, as JSON and PNG plots.",
    )
    target = p.add_argument_group("target")
    target.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:30000")
    target.add_argument("--host", default="127.0.0.1", help="if no --base-url (default 127.0.0.1)")
    target.add_argument("--port", type=int, default=30000, help="if no --base-url (default 30000)")
    target.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sglang",
        help="sglang: native /generate (token-id prompts); openai: /v1/completions (text)",
    )
    target.add_argument(
        "--model", default=None, help="model name for --backend openai (default: the server's)"
    )
    target.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer path or cached HF name (default: the one the server reports, "
        "if it is on this machine); needed for sharegpt and random+openai",
    )
    data = p.add_argument_group("dataset")
    data.add_argument("--dataset-name", choices=DATASETS, default="random")
    data.add_argument("--dataset-path", default=None, help="ShareGPT-format JSON file")
    data.add_argument("--num-prompts", type=int, default=1000, help="measured requests")
    data.add_argument("--random-input-len", type=int, default=1024, help="max prompt tokens")
    data.add_argument("--random-output-len", type=int, default=1024, help="max output tokens")
    data.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="prompt and output lengths are drawn uniformly from [max(len*ratio, 1), len], "
        "as SGLang's bench_serving: the default 0.0 draws anywhere from 1 to len, 1.0 gives "
        "exactly len (the run's header prints the lengths drawn)",
    )
    data.add_argument(
        "--sharegpt-output-len",
        type=int,
        default=None,
        help="output tokens per ShareGPT request (default: the reply's)",
    )
    data.add_argument(
        "--conversation-turns",
        type=int,
        default=3,
        help="turns per synthetic conversation (default 3)",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="Poisson arrivals per second (default inf: all at once)",
    )
    load.add_argument("--max-concurrency", type=int, default=None, help="requests in flight")
    load.add_argument(
        "--warmup-requests",
        type=int,
        default=1,
        help="sent first and left out of every statistic (default 1)",
    )
    load.add_argument("--seed", type=int, default=1, help="dataset and arrival times (default 1)")
    load.add_argument(
        "--disable-ignore-eos",
        action="store_true",
        help="let outputs stop at EOS (default: exactly the requested length)",
    )
    load.add_argument(
        "--extra-request-body",
        default=None,
        metavar="JSON",
        help="fields merged into every request body",
    )
    out = p.add_argument_group("results")
    out.add_argument("--output-file", default=None, help="write the JSON report here")
    out.add_argument(
        "--plot-dir",
        default=None,
        help="write PNG plots here (needs matplotlib): latency CDFs with p50/p90/p99 and the "
        "--slo-* limits marked, and throughput over time",
    )
    out.add_argument("--slo-ttft-ms", type=float, default=None, help="goodput: TTFT limit")
    out.add_argument("--slo-tpot-ms", type=float, default=None, help="goodput: TPOT limit")
    out.add_argument(
        "--disable-progress",
        "--disable-tqdm",
        action="store_true",
        help="no progress bar on stderr",
    )
    prof = p.add_argument_group("profiling")
    prof.add_argument(
        "--profile",
        action="store_true",
        help="trace every prefill and decode worker separately with the torch profiler "
        "during the measured run (/start_profile, /stop_profile); the report lists the "
        "trace files per role",
    )
    prof.add_argument(
        "--profile-output-dir",
        default=None,
        help="where the workers write their traces (a path on their machines, inside each "
        "server's $PDCORE_TORCH_PROFILER_DIR or $SGLANG_TORCH_PROFILER_DIR, else /tmp; "
        "relative paths are relative to it; default: those variables if set here, else each "
        "server's own default)",
    )
    return p


def validate(args) -> None:
    """Raise ``ConfigError`` for the first bad flag; fill ``base_url`` and ``extra_body``."""
    positive_ints = {
        "--num-prompts": args.num_prompts,
        "--random-input-len": args.random_input_len,
        "--random-output-len": args.random_output_len,
        "--conversation-turns": args.conversation_turns,
        "--max-concurrency": args.max_concurrency,
        "--sharegpt-output-len": args.sharegpt_output_len,
    }
    for flag, value in positive_ints.items():
        if value is not None and value < 1:
            raise ConfigError(flag, f"must be >= 1, got {value}")
    if args.warmup_requests < 0:
        raise ConfigError("--warmup-requests", f"must be >= 0, got {args.warmup_requests}")
    if not 0.0 <= args.random_range_ratio <= 1.0:
        raise ConfigError("--random-range-ratio", f"must be in 0..1, got {args.random_range_ratio}")
    if math.isnan(args.request_rate) or args.request_rate <= 0:
        raise ConfigError("--request-rate", f"must be > 0 (or inf), got {args.request_rate}")
    for flag, value in (("--slo-ttft-ms", args.slo_ttft_ms), ("--slo-tpot-ms", args.slo_tpot_ms)):
        if value is not None and not value > 0:
            raise ConfigError(flag, f"must be > 0, got {value}")
    if args.dataset_name == "sharegpt" and not args.dataset_path:
        raise ConfigError("--dataset-path", "required with --dataset-name sharegpt")
    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", f"must be a TCP port in 1..65535, got {args.port}")
    base = args.base_url or f"http://{args.host}:{args.port}"
    if not base.startswith(("http://", "https://")):
        raise ConfigError("--base-url", f"must start with http:// or https://, got {base!r}")
    args.base_url = base.rstrip("/")
    args.extra_body = _extra_body(args.extra_request_body)
    if args.plot_dir:
        plots.require()
    if args.profile_output_dir is not None and not args.profile:
        raise ConfigError("--profile-output-dir", "needs --profile")
    args.profile_output_dir = args.profile_output_dir or profiler_dir(default=None)


def _extra_body(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("--extra-request-body", f"not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ConfigError("--extra-request-body", "must be a JSON object")
    return body


def run(argv: list[str], prog: str = "pdcore bench serving") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        validate(args)
        from pdcore.benchserve.runner import run_benchmark

        return run_benchmark(args, prog)
    except ConfigError as e:
        parser.error(str(e))
    except ServerError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
