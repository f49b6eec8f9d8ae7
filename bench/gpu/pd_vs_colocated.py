"""The headline experiment: 1 prefill + 1 decode vs 2 colocated servers on 2 GPUs.

Llama-3.1-8B architecture (``llama-3.1-8b-instruct.config.json`` next to this file),
random bf16 weights (``--load-format dummy``), one host with two GPUs, pdcore's
router in front of every configuration:

* ``pd``: a prefill server on GPU 0 and a decode server on GPU 1 (``--base-gpu-id
  1``), the KV moving GPU to GPU through ``--backend`` (``cuda_ipc`` by default),
  behind ``launch_router --pd-disaggregation``;
* ``colocated``: two null-mode servers (GPU 0 and GPU 1) behind the router with the
  ``round_robin`` policy;
* ``conditional``: ``pd`` with the decode server started with
  ``--disaggregation-local-prefill-threshold N`` (conditional disaggregation; only
  this configuration passes that flag).

Every configuration gets the same requests (random token-id prompts, seeded per
rate) at each Poisson ``--rates`` value; the client is pdcore's own benchmark client
(``pdcore.benchserve``, the code behind ``pdcore bench serving``), used as a library
so prompt and output lengths have independent ranges and the token ids stay below
the model's vocabulary. Reported per config x rate: TTFT, ITL, TPOT and E2E
distributions (p50/p90/p99), request and token throughput, goodput under the SLOs
(and over a small grid of SLOs), plus a ``summary`` of the ratios the goal is about
(PD p99 ITL <= 0.5x colocated and PD goodput >= 1.5x at matched throughput).

No hub access is needed: the model folder is made here from the config JSON and a
generated word-level tokenizer with exactly the model's vocabulary (ids ``<0>`` ..
``<128255>``), so every id the model can emit decodes.

GPU host (2 GPUs)::

    python bench/gpu/pd_vs_colocated.py --out $OUT/pd_vs_colocated.json

CPU smoke of the orchestration (embedded SmolLM2, Mooncake over TCP, tiny lengths)::

    python bench/gpu/pd_vs_colocated.py --cpu-smoke --out /tmp/pd_vs_colocated_smoke.json

The JSON is rewritten after every rate, so a run cut by a timeout keeps what it
measured; ``--merge`` adds configurations to an existing file (run them in
separate commands). ``plot_pd_vs_colocated.py`` draws it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pdcore.up import health, launch
from pdcore.up.plan import plan_servers

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONFIG_8B = HERE / "llama-3.1-8b-instruct.config.json"
DEFAULT_OUT = HERE / "results" / "pd_vs_colocated.json"
CONFIGS = ("pd", "colocated", "conditional")
DESCRIPTIONS = {
    "pd": "1 prefill (GPU 0) + 1 decode (GPU 1) behind the PD router",
    "colocated": "2 null-mode servers (GPU 0, GPU 1) behind the router, round_robin",
    "conditional": "pd with decode's --disaggregation-local-prefill-threshold",
}
LOCAL_PREFILL_FLAG = "--disaggregation-local-prefill-threshold"
# goodput is also computed for every pair of these (the SLOs in the JSON are the headline)
SLO_GRID_TTFT_MS = (500, 1000, 2000, 4000)
SLO_GRID_TPOT_MS = (20, 30, 50, 100)
GOAL_ITL_RATIO = 0.5
GOAL_GOODPUT_RATIO = 1.5
MIN_PROMPTS = 16
# time a configuration needs before its first rate (start-up, warm-up) and after its
# last (stop), as planned against --time-budget-s
STARTUP_ESTIMATE_S = 90.0
TEARDOWN_RESERVE_S = 20.0
RATE_DRAIN_ESTIMATE_S = 12.0
SMOKE = {
    "input_lens": [32, 96],
    "output_lens": [8, 16],
    "rates": "4",
    "num_prompts": 12,
    "warmup_requests": 2,
    "time_budget_s": 240.0,
    "rate_timeout_s": 60.0,
    "backend": "mooncake",
    "local_prefill_threshold": 64,
}


# ---- arguments ---------------------------------------------------------------------------


def _csv_configs(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in CONFIGS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown config(s) {bad or text!r}; choose from {','.join(CONFIGS)}"
        )
    return list(dict.fromkeys(names))


def _csv_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be finite and > 0: {text!r}")
    return rates


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs",
        type=_csv_configs,
        default=["pd", "colocated"],
        help="comma-separated, run in this order: pd,colocated,conditional "
        "(default pd,colocated; conditional needs decode's " + LOCAL_PREFILL_FLAG + ")",
    )
    p.add_argument(
        "--rates",
        type=_csv_rates,
        default=None,
        help="req/s, run in this order (default 2,4,8; put the rate that matters most first "
        "if the time budget may cut the last)",
    )
    p.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="measured requests per rate (default: rate x --arrival-window-s, "
        f"at least {MIN_PROMPTS})",
    )
    p.add_argument(
        "--arrival-window-s",
        type=float,
        default=35.0,
        help="seconds of Poisson arrivals per rate when --num-prompts is not given "
        "(default 35; a rate then takes about this plus the last requests' decode)",
    )
    p.add_argument(
        "--input-lens",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="prompt tokens, uniform in [MIN, MAX] (default 1024 4096)",
    )
    p.add_argument(
        "--output-lens",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="output tokens (ignore_eos), uniform in [MIN, MAX] (default 128 512)",
    )
    p.add_argument("--slo-ttft-ms", type=float, default=2000.0, help="goodput SLO (default 2000)")
    p.add_argument("--slo-tpot-ms", type=float, default=50.0, help="goodput SLO (default 50)")
    p.add_argument(
        "--backend", default=None, help="KV transfer backend for PD: cuda_ipc (default) | nixl"
    )
    p.add_argument(
        "--local-prefill-threshold",
        type=int,
        default=None,
        help="conditional config: decode's " + LOCAL_PREFILL_FLAG + " (default 1536)",
    )
    p.add_argument("--out", default=None, help=f"result JSON (default {DEFAULT_OUT})")
    p.add_argument(
        "--log-dir", default=None, help="server/router logs (default: <out stem>_logs next to it)"
    )
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="everything (start-ups, rates, stops) ends by about this many seconds after "
        "the start: a rate or config that would not fit is skipped and noted (default 480)",
    )
    p.add_argument(
        "--rate-timeout-s",
        type=float,
        default=None,
        help="a rate's requests still running this long after its start are cancelled "
        "and count as failed (default 120)",
    )
    p.add_argument(
        "--startup-timeout-s", type=float, default=300.0, help="per config (default 300)"
    )
    p.add_argument(
        "--warmup-requests",
        type=int,
        default=None,
        help="per config, before the first rate, out of every statistic (default 8)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--model-config",
        default=None,
        help="HF config.json of the architecture, run with random weights (default: the "
        "Llama-3.1-8B one here; with --cpu-smoke: the embedded SmolLM2 instead)",
    )
    p.add_argument(
        "--model-path",
        default=None,
        help="use this model folder as is (its weights, its tokenizer) instead of "
        "dummy weights for --model-config",
    )
    p.add_argument(
        "--server-args", default="", help="extra flags for every server, one quoted string"
    )
    p.add_argument(
        "--router-args", default="", help="extra flags for every router, one quoted string"
    )
    p.add_argument(
        "--conditional-decode-args",
        default="",
        help="extra flags for the conditional config's decode server only",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the configs of an existing --out that this run does not run",
    )
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="prove the orchestration on a CPU: embedded model, tiny lengths, one rate, "
        "Mooncake; unset flags get smoke defaults",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    gpu = {
        "input_lens": [1024, 4096],
        "output_lens": [128, 512],
        "rates": "2,4,8",
        "num_prompts": None,
        "warmup_requests": 8,
        "time_budget_s": 480.0,
        "rate_timeout_s": 120.0,
        "backend": "cuda_ipc",
        "local_prefill_threshold": 1536,
    }
    defaults = SMOKE if args.cpu_smoke else gpu
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, _csv_rates(value) if name == "rates" else value)
    for flag in ("input_lens", "output_lens"):
        lo, hi = getattr(args, flag)
        if not 1 <= lo <= hi:
            parser.error(f"--{flag.replace('_', '-')}: need 1 <= MIN <= MAX, got {lo} {hi}")
    if args.num_prompts is not None and args.num_prompts < 1:
        parser.error("--num-prompts must be >= 1")
    for flag in ("slo_ttft_ms", "slo_tpot_ms", "time_budget_s", "rate_timeout_s"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0")
    if args.local_prefill_threshold < 0:
        parser.error("--local-prefill-threshold must be >= 0")
    try:
        for name in ("server_args", "router_args", "conditional_decode_args"):
            setattr(args, name, shlex.split(getattr(args, name)))
    except ValueError as e:
        parser.error(f"--server-args/--router-args/--conditional-decode-args: {e}")
    if args.out is None:
        smoke_out = Path(tempfile.gettempdir()) / "pd_vs_colocated_cpu_smoke.json"
        args.out = str(smoke_out if args.cpu_smoke else DEFAULT_OUT)
    out = Path(args.out)
    args.log_dir = args.log_dir or str(out.parent / f"{out.stem}_logs")
    return args


def prompts_for_rate(args, rate: float) -> int:
    if args.num_prompts is not None:
        return args.num_prompts
    return max(MIN_PROMPTS, math.ceil(rate * args.arrival_window_s))


def rate_key(rate: float) -> str:
    return f"{rate:g}"


# ---- the result document (pure) --------------------------------------------------------------


def ratio(num, den):
    """``num / den``; None when either is missing or ``den`` is 0."""
    if num is None or den is None or den == 0:
        return None
    return num / den


def _point(result: dict | None) -> dict | None:
    """The numbers of one config x rate the summary compares."""
    if not result or "latency_ms" not in result:
        return None
    lat, good = result["latency_ms"], result.get("goodput") or {}
    return {
        "request_throughput": result.get("request_throughput"),
        "output_throughput": result.get("output_throughput"),
        "p99_itl_ms": lat["itl"]["p99"],
        "p99_ttft_ms": lat["ttft"]["p99"],
        "p99_tpot_ms": lat["tpot"]["p99"],
        "request_goodput": good.get("request_goodput"),
        "completed": result.get("completed"),
        "failed": result.get("failed"),
    }


def _compare(a: dict | None, b: dict | None, goals: bool) -> dict | None:
    if a is None or b is None:
        return None
    out = {
        "p99_itl_ratio": ratio(a["p99_itl_ms"], b["p99_itl_ms"]),
        "p99_ttft_ratio": ratio(a["p99_ttft_ms"], b["p99_ttft_ms"]),
        "p99_tpot_ratio": ratio(a["p99_tpot_ms"], b["p99_tpot_ms"]),
        "goodput_ratio": ratio(a["request_goodput"], b["request_goodput"]),
        "request_throughput_ratio": ratio(a["request_throughput"], b["request_throughput"]),
    }
    zero_base = b["request_goodput"] == 0 and (a["request_goodput"] or 0) > 0
    if zero_base:
        out["goodput_ratio_note"] = "the baseline's goodput is 0 (ratio unbounded)"
    if goals:
        itl, good = out["p99_itl_ratio"], out["goodput_ratio"]
        out["goal_itl_met"] = None if itl is None else itl <= GOAL_ITL_RATIO
        out["goal_goodput_met"] = (
            True if zero_base else None if good is None else good >= GOAL_GOODPUT_RATIO
        )
    return out


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of ``y`` at ``x`` over ``(x, y)`` points; None outside them."""
    pts = sorted(p for p in points if p[0] is not None and p[1] is not None)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(pts) == 1 and pts[0][0] == x:
        return pts[0][1]
    return None


def _matched(doc: dict, name: str, base: str) -> list[dict]:
    """``name``'s p99 ITL / TTFT against ``base``'s interpolated at the same achieved
    request throughput (only inside the throughput range ``base`` covered)."""
    base_points = [_point(r) for r in _results(doc, base).values()]
    base_points = [p for p in base_points if p]
    out = []
    for key, result in _results(doc, name).items():
        p = _point(result)
        if p is None or p["request_throughput"] is None:
            continue
        x = p["request_throughput"]
        itl = _interpolate([(b["request_throughput"], b["p99_itl_ms"]) for b in base_points], x)
        ttft = _interpolate([(b["request_throughput"], b["p99_ttft_ms"]) for b in base_points], x)
        out.append(
            {
                "request_rate": float(key),
                "request_throughput": x,
                f"{base}_p99_itl_ms_interpolated": itl,
                f"{base}_p99_ttft_ms_interpolated": ttft,
                "p99_itl_ratio": ratio(p["p99_itl_ms"], itl),
                "p99_ttft_ratio": ratio(p["p99_ttft_ms"], ttft),
            }
        )
    return out


def _results(doc: dict, name: str) -> dict:
    return (doc.get("configs", {}).get(name) or {}).get("results", {})


def compute_summary(doc: dict) -> dict:
    """Per rate: each config's headline numbers and the ratios PD/colocated,
    conditional/PD and conditional/colocated; plus the matched-throughput view."""
    rates = sorted({float(k) for name in CONFIGS for k in _results(doc, name)})
    per_rate = []
    for rate in rates:
        key = rate_key(rate)
        points = {name: _point(_results(doc, name).get(key)) for name in CONFIGS}
        entry = {"request_rate": rate, **{n: p for n, p in points.items() if p is not None}}
        entry["pd_vs_colocated"] = _compare(points["pd"], points["colocated"], goals=True)
        entry["conditional_vs_pd"] = _compare(points["conditional"], points["pd"], goals=False)
        entry["conditional_vs_colocated"] = _compare(
            points["conditional"], points["colocated"], goals=True
        )
        per_rate.append(entry)
    checks = [e["pd_vs_colocated"] for e in per_rate if e["pd_vs_colocated"]]
    met = [c for c in checks if c.get("goal_itl_met") and c.get("goal_goodput_met")]
    return {
        "goal": f"at matched throughput, PD p99 ITL <= {GOAL_ITL_RATIO}x colocated and PD "
        f"goodput >= {GOAL_GOODPUT_RATIO}x colocated",
        "per_rate": per_rate,
        "rates_where_pd_meets_both_goals": [
            e["request_rate"] for e in per_rate if e["pd_vs_colocated"] in met
        ],
        "matched_throughput": {
            "pd_vs_colocated": _matched(doc, "pd", "colocated"),
            "conditional_vs_colocated": _matched(doc, "conditional", "colocated"),
            "conditional_vs_pd": _matched(doc, "conditional", "pd"),
        },
    }


def write_doc(doc: dict, path: str | Path) -> None:
    """Recompute the summary and write atomically (a reader never sees half a file)."""
    doc["summary"] = compute_summary(doc)
    doc["updated"] = _now()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def model_summary(config: dict) -> dict:
    """Shape, parameter count and KV bytes per token (bf16) of an HF decoder config."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads")
    kv_heads = kv_heads or heads
    head_dim = config.get("head_dim") or h // heads
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    attn = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
    per_layer = attn + 3 * h * inter + 2 * h
    embed = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    params = layers * per_layer + embed + h
    return {
        "architecture": (config.get("architectures") or ["?"])[0],
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "parameters": params,
        "weight_bytes_bf16": 2 * params,
        "kv_bytes_per_token_bf16": layers * 2 * kv_heads * head_dim * 2,
        "weights": "random (--load-format dummy), bf16",
    }


def new_doc(args, host: dict, model: dict) -> dict:
    return {
        "schema": "pd_vs_colocated/1",
        "tool": "bench/gpu/pd_vs_colocated.py",
        "date": _now(),
        "cpu_smoke": args.cpu_smoke,
        "host": host,
        "git": git_info(),
        "model": model,
        "workload": {
            "dataset": "random token ids (uniform over [0, min(model, tokenizer) vocab)), "
            "same requests and arrival times for every config at a rate",
            "input_tokens": {"min": args.input_lens[0], "max": args.input_lens[1]},
            "output_tokens": {"min": args.output_lens[0], "max": args.output_lens[1]},
            "ignore_eos": True,
            "arrivals": "Poisson at each request rate",
            "rates": args.rates,
            "num_prompts": {rate_key(r): prompts_for_rate(args, r) for r in args.rates},
            "warmup_requests_per_config": args.warmup_requests,
            "seed": args.seed,
            "client": "pdcore.benchserve (native /generate, streaming) through the router",
        },
        "slo": {
            "ttft_ms": args.slo_ttft_ms,
            "tpot_ms": args.slo_tpot_ms,
            "why": "Llama-3.1-8B bf16 on one H100/H200: a decode step is ~6-15 ms at small "
            "to medium batch and a 4k-token prefill ~0.15-0.3 s, so 2 s TTFT leaves room for "
            "queueing at moderate load and 50 ms TPOT is ~3-5 decode steps per token; "
            "goodput_grid in every result gives other SLO pairs",
            "grid_ttft_ms": list(SLO_GRID_TTFT_MS),
            "grid_tpot_ms": list(SLO_GRID_TPOT_MS),
        },
        "pd_transfer_backend": args.backend,
        "local_prefill_threshold": args.local_prefill_threshold,
        "args": {k: v for k, v in vars(args).items()},
        "configs": {},
    }


def git_info() -> dict:
    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def host_info() -> dict:
    """Cards and versions, asked in a child process (no CUDA context in this one)."""
    code = (
        "import json, platform, torch\n"
        "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
        "print(json.dumps({'cards': [torch.cuda.get_device_name(i) for i in range(n)],"
        " 'torch': torch.__version__, 'cuda': torch.version.cuda,"
        " 'python': platform.python_version(), 'hostname': platform.node()}))\n"
    )
    info: dict = {}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        info = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
        if out.returncode != 0:
            info["error"] = out.stderr[-2000:]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        info["error"] = f"{type(e).__name__}: {e}"
    try:
        import pdcore

        info["pdcore"] = pdcore.__version__
    except ImportError:
        pass
    info["cpu_count"] = os.cpu_count()
    return info


# ---- model folder ------------------------------------------------------------------------------


def make_model_dir(config_path: str | Path, dest: Path) -> Path:
    """``config.json`` + a word-level tokenizer whose vocabulary is exactly the model's
    (token ``<i>`` is id ``i``): dummy weights need no checkpoint, and every id the
    model emits decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = json.loads(Path(config_path).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    vocab = {f"<{i}>": i for i in range(config["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(dest / "tokenizer.json"))
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<0>",
        "eos_token": f"<{eos}>" if eos is not None else None,
        "model_max_length": config.get("max_position_embeddings", 131072),
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    return dest


# ---- processes ---------------------------------------------------------------------------------


# A server or the router exited or did not become ready; the message says which.
StartFailed = launch.StartFailed


class Terminated(BaseException):
    """SIGTERM (e.g. the command's timeout): stop everything, keep the JSON."""


@dataclass
class Proc:
    """One process of a config: what to start (``args`` after its address, role and
    GPU) and, once started by ``pdcore.up.launch``, the started process."""

    name: str
    role: str  # prefill | decode | null | router
    args: list[str]
    gpu: int | None = None
    launched: launch.Proc | None = None
    ready_after_s: float | None = None
    info: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "" if self.launched is None else self.launched.url

    @property
    def bootstrap_port(self) -> int | None:
        return getattr(self.launched, "bootstrap_port", None)

    def describe(self) -> dict:
        cmd = [] if self.launched is None else self.launched.cmd
        out = {
            "name": self.name,
            "role": self.role,
            "url": self.url,
            "gpu": self.gpu,
            "bootstrap_port": self.bootstrap_port,
            "ready_after_s": self.ready_after_s,
            "cmd": " ".join(shlex.quote(c) for c in cmd[1:]),
        }
        if self.info:
            out["engine_info"] = self.info
        return out

    def exited(self) -> int | None:
        return None if self.launched is None else self.launched.exited()

    def tail(self, lines: int = 30) -> list[str]:
        return [] if self.launched is None else self.launched.tail(lines).splitlines()


def plan_config(name: str, args, model_args: list[str]) -> list[Proc]:
    """The servers and the router of one config (router last; its worker flags are added
    once the servers are up). GPUs as ``pdcore up`` assigns them: one block each."""
    common = ["--log-level", "warning", *model_args]
    if args.cpu_smoke:
        common += ["--device", "cpu", "--max-total-tokens", "8192"]
    else:
        common += ["--device", "cuda"]
    gpus = [s.base_gpu_id for s in plan_servers(2, 0, gpus=not args.cpu_smoke)]
    pd = ["--disaggregation-transfer-backend", args.backend]
    if name == "colocated":
        servers = [
            Proc("null-0", "null", [*common, *args.server_args], gpus[0]),
            Proc("null-1", "null", [*common, *args.server_args], gpus[1]),
        ]
    else:
        decode_extra: list[str] = []
        if name == "conditional":
            decode_extra = [LOCAL_PREFILL_FLAG, str(args.local_prefill_threshold)]
            decode_extra += args.conditional_decode_args
        plan = plan_servers(1, 1, gpus=not args.cpu_smoke)
        servers = [
            Proc("prefill", "prefill", [*common, *pd, *args.server_args], plan[0].base_gpu_id),
            Proc(
                "decode",
                "decode",
                [*common, *pd, *args.server_args, *decode_extra],
                plan[1].base_gpu_id,
            ),
        ]
    return [*servers, Proc("router", "router", ["--log-level", "warning", *args.router_args])]


def router_workers(name: str, servers: list[Proc]) -> list[str]:
    """The router's worker flags, from the started servers."""
    if name == "colocated":
        return ["--worker-urls", *(s.url for s in servers), "--policy", "round_robin"]
    prefill, decode = servers
    return [
        "--pd-disaggregation",
        "--prefill",
        prefill.url,
        str(prefill.bootstrap_port),
        "--decode",
        decode.url,
    ]


class Cluster:
    """Start the servers (at once), then the router; stop them all on every path."""

    def __init__(self, name: str, procs: list[Proc], log_dir: Path, cpu: bool):
        self.name = name
        self.procs = procs
        self.servers = [p for p in procs if p.role != "router"]
        self.router = procs[-1]
        self.log_dir = log_dir
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        if cpu:  # the servers share this machine's cores
            threads = max(1, (os.cpu_count() or 1) // len(self.servers))
            self.env.setdefault("OMP_NUM_THREADS", str(threads))

    def _spawn(self, p: Proc) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        where = dict(name=f"{self.name}-{p.name}", log_dir=self.log_dir, env=self.env)
        if p.role == "router":
            # user's router flags after the workers, as before
            worker_flags = router_workers(self.name, self.servers)
            p.launched = launch.start_router(*p.args[:2], *worker_flags, *p.args[2:], **where)
        else:
            role = None if p.role == "null" else p.role
            p.launched = launch.start_server(*p.args, role=role, gpu=p.gpu, **where)

    def start(self, timeout: float) -> None:
        import httpx

        start = time.monotonic()
        for p in self.servers:
            self._spawn(p)
        with httpx.Client(trust_env=False, timeout=2.0) as http:
            self._wait(http, self.servers, start, timeout)
            for p in self.servers:
                p.info = _engine_info(http, p.url)
            self._spawn(self.router)
            self._wait(http, [self.router], start, timeout)

    def _wait(self, http, procs: list[Proc], start: float, timeout: float) -> None:
        last_note = start
        while True:
            pending = [p for p in procs if p.ready_after_s is None]
            if not pending:
                return
            for p in pending:
                self.check_alive()
                if _ready(http, p):
                    p.ready_after_s = round(time.monotonic() - start, 1)
                    _say(f"  {self.name}/{p.name} ready after {p.ready_after_s}s ({p.url})")
            now = time.monotonic()
            if now - start > timeout:
                names = ", ".join(p.name for p in pending)
                raise StartFailed(
                    f"{names} not ready after {timeout:.0f}s; last lines:\n"
                    + "\n".join(f"[{p.name}] {x}" for p in pending for x in p.tail(15))
                )
            if now - last_note > 15:
                last_note = now
                notes = ", ".join(f"{p.name}: {_last_note(p)}" for p in pending)
                _say(f"  {self.name}: waiting {now - start:.0f}s ({notes})")
            time.sleep(0.5)

    def check_alive(self) -> None:
        for p in self.procs:
            code = p.exited()
            if code is not None:
                raise StartFailed(
                    f"{self.name}/{p.name} exited with code {code}; its last lines "
                    f"({self.log_dir}):\n" + "\n".join(p.tail(30))
                )

    def dead(self) -> list[dict]:
        return [
            {"name": p.name, "exit_code": p.exited(), "log_tail": p.tail(30)}
            for p in self.procs
            if p.launched is not None and p.exited() is not None
        ]

    def stop(self) -> None:
        if self.router.launched is not None:
            launch.stop_all([self.router.launched], 15.0)
        launch.stop_all([p.launched for p in self.servers if p.launched is not None], 30.0)


def _ready(http, p: Proc) -> bool:
    """Healthy (a server started again on fresh ports if its port was taken); a router
    once every worker it knows is healthy."""
    if not p.launched.check():
        return False
    return p.role != "router" or health.workers_healthy(http, p.url)


def _engine_info(http, url: str) -> dict:
    try:
        info = http.get(f"{url}/get_server_info", timeout=30.0).json()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    out = dict(info.get("engine_info") or {})
    for key in ("attention_backend", "disaggregation_transfer_backend", "chunked_prefill_size"):
        if key in info and key not in out:
            out[key] = info[key]
    return out


def _server_stats(url: str) -> dict:
    """A PD server's ``disaggregation`` metrics and pool use (after a rate)."""
    import httpx

    try:
        info = httpx.get(f"{url}/get_server_info", timeout=30.0, trust_env=False).json()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {k: info[k] for k in ("engine", "kv_cache", "disaggregation") if k in info}


def _last_note(p: Proc) -> str:
    notes = [x for x in p.tail(40) if x.startswith("pdcore: ")]
    return notes[-1].removeprefix("pdcore: ")[:80] if notes else "starting"


# ---- load ----------------------------------------------------------------------------------------


def make_specs(n: int, input_lens, output_lens, vocab: int, seed: int) -> list:
    """``n`` requests: prompt ids uniform in [0, vocab), lengths uniform in the ranges."""
    import numpy as np

    from pdcore.benchserve.datasets import RequestSpec

    rng = np.random.default_rng(seed)
    specs = []
    for _ in range(n):
        n_in = int(rng.integers(input_lens[0], input_lens[1] + 1))
        n_out = int(rng.integers(output_lens[0], output_lens[1] + 1))
        ids = rng.integers(0, vocab, n_in).tolist()
        specs.append(RequestSpec(ids, n_in, n_out))
    return specs


def rate_seed(seed: int, rate: float) -> int:
    return seed * 1_000_003 + round(rate * 1000)


async def _run_rate(base_url: str, specs: list, rate: float, seed: int, timeout: float):
    """Poisson arrivals as ``pdcore bench serving`` sends them; requests still running
    ``timeout`` s after the start are cancelled and become failures."""
    from pdcore.benchserve import client
    from pdcore.benchserve.client import ClientOptions, RequestResult
    from pdcore.benchserve.load import arrival_offsets

    opts = ClientOptions(backend="sglang", base_url=base_url, ignore_eos=True)
    offsets = arrival_offsets(len(specs), rate, seed)
    sent = [False] * len(specs)
    async with client.new_session() as session:
        start = time.perf_counter()

        async def one(i: int):
            delay = start + offsets[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = True
            return await client.send(session, opts, specs[i])

        tasks = [asyncio.create_task(one(i)) for i in range(len(specs))]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        end = time.perf_counter()
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    results = []
    for i, t in enumerate(tasks):
        if t in done and t.exception() is None:
            results.append(t.result())
            continue
        why = "cancelled at the rate's deadline" if t in pending else repr(t.exception())
        r = RequestResult(prompt_len=specs[i].prompt_len, requested_output_len=specs[i].output_len)
        r.error = why + ("" if sent[i] else " (never sent)")
        results.append(r)
    if not pending:
        end = max((r.start + r.latency for r in results if r.success), default=end)
    return results, start, end - start, len(pending), sum(1 for i in range(len(specs)) if sent[i])


def rate_result(results, start: float, duration: float, slo: tuple[float, float]) -> dict:
    """The JSON of one config x rate (pdcore.benchserve's definitions)."""
    from pdcore.benchserve import metrics

    summary = metrics.summarize(results, duration, *slo)
    out = dict(summary)
    if out.get("goodput"):
        out["goodput"]["fraction_of_requests"] = ratio(
            out["goodput"]["good_requests"], len(results)
        )
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    out["goodput_grid"] = [
        {
            "slo_ttft_ms": ttft,
            "slo_tpot_ms": tpot,
            "request_goodput": per_s(sum(metrics.meets_slo(r, ttft, tpot) for r in results)),
        }
        for ttft in SLO_GRID_TTFT_MS
        for tpot in SLO_GRID_TPOT_MS
    ]
    out["latency_ms"] = metrics.latencies_ms(results)
    out["errors"] = metrics.errors(results)
    out["timeline"] = metrics.timeline(results, start, duration)

    def ms(x):
        return None if x is None else round(x * 1000, 3)

    out["requests"] = {
        "success": [r.success for r in results],
        "prompt_tokens": [r.prompt_len for r in results],
        "output_tokens": [r.output_len for r in results],
        "sent_at_s": [round(r.start - start, 4) if r.start else None for r in results],
        "ttft_ms": [ms(r.ttft) if r.success else None for r in results],
        "tpot_ms": [ms(metrics.tpot(r)) if r.success else None for r in results],
        "e2e_ms": [ms(r.latency) if r.success else None for r in results],
        "max_itl_ms": [ms(max(r.itl)) if r.success and r.itl else None for r in results],
    }
    return out


async def _warm_up(base_url: str, args, vocab: int) -> dict:
    """Every prompt length class once per server and a burst of short requests (decode
    batches, graph replays), concurrently; excluded from every statistic."""
    from pdcore.benchserve import client
    from pdcore.benchserve.client import ClientOptions

    n = args.warmup_requests
    if n == 0:
        return {"requests": 0}
    lo, hi = args.input_lens
    long_specs = make_specs(n, (lo, hi), (4, 16), vocab, args.seed + 7)
    burst = make_specs(4 * n, (lo, lo), (16, 64), vocab, args.seed + 8)
    opts = ClientOptions(backend="sglang", base_url=base_url, ignore_eos=True)
    t = time.perf_counter()
    async with client.new_session() as session:
        first = await asyncio.gather(*(client.send(session, opts, s) for s in long_specs))
        second = await asyncio.gather(*(client.send(session, opts, s) for s in burst))
    done = [*first, *second]
    errors = sorted({r.error for r in done if not r.success})
    return {
        "requests": len(done),
        "succeeded": sum(r.success for r in done),
        "seconds": round(time.perf_counter() - t, 1),
        "errors": errors[:5],
    }


def _vocab(base_url: str, servers: list[Proc]) -> int:
    """Ids must be below both the tokenizer's vocabulary (the server checks it) and the
    model's (the embedding table)."""
    import httpx

    sizes = [p.info.get("vocab_size") for p in servers]
    try:
        info = httpx.get(f"{base_url}/get_model_info", timeout=30.0, trust_env=False).json()
        sizes.append(info.get("vocab_size"))
    except Exception:
        pass
    sizes = [int(s) for s in sizes if s]
    if not sizes:
        raise StartFailed("no server reported its vocabulary size")
    return min(sizes)


# ---- the run -------------------------------------------------------------------------------------


def run_config(name: str, args, doc: dict, model_args: list[str], deadline: float) -> None:
    record: dict = {
        "description": DESCRIPTIONS[name],
        "status": "starting",
        "error": None,
        "results": {},
        "skipped_rates": [],
        "started": _now(),
    }
    if name == "conditional":
        record["local_prefill_threshold"] = args.local_prefill_threshold
    doc["configs"][name] = record
    cluster = Cluster(name, plan_config(name, args, model_args), Path(args.log_dir), args.cpu_smoke)
    out = args.out
    try:
        t0 = time.monotonic()
        _say(f"{name}: starting {', '.join(p.name for p in cluster.procs)}")
        cluster.start(min(args.startup_timeout_s, max(30.0, deadline - time.monotonic())))
        record["startup_s"] = round(time.monotonic() - t0, 1)
        record["servers"] = [p.describe() for p in cluster.procs]
        base = cluster.router.url
        vocab = _vocab(base, cluster.servers)
        record["prompt_vocab"] = vocab
        _say(f"{name}: ready in {record['startup_s']}s; warming up")
        record["warmup"] = asyncio.run(_warm_up(base, args, vocab))
        cluster.check_alive()
        if args.warmup_requests and not record["warmup"]["succeeded"]:
            raise StartFailed(f"every warm-up request failed: {record['warmup']['errors']}")
        record["status"] = "running"
        write_doc(doc, out)
        for rate in args.rates:
            n = prompts_for_rate(args, rate)
            window = n / rate
            left = deadline - TEARDOWN_RESERVE_S - time.monotonic()
            if left < window + RATE_DRAIN_ESTIMATE_S:
                need = window + RATE_DRAIN_ESTIMATE_S
                why = f"time budget: {left:.0f}s left, needs ~{need:.0f}s"
                record["skipped_rates"].append({"request_rate": rate, "why": why})
                _say(f"{name}: rate {rate:g} skipped (time budget)")
                continue
            timeout = min(args.rate_timeout_s, left)
            specs = make_specs(
                n, args.input_lens, args.output_lens, vocab, rate_seed(args.seed, rate)
            )
            _say(f"{name}: rate {rate:g} req/s, {n} requests (cut at {timeout:.0f}s)")
            results, start, duration, cancelled, sent = asyncio.run(
                _run_rate(base, specs, rate, rate_seed(args.seed, rate), timeout)
            )
            res = rate_result(results, start, duration, (args.slo_ttft_ms, args.slo_tpot_ms))
            res.update(request_rate=rate, num_prompts=n, sent=sent, cancelled_at_deadline=cancelled)
            res["servers_after"] = {
                p.name: _server_stats(p.url) for p in cluster.servers if p.role != "null"
            }
            record["results"][rate_key(rate)] = res
            _say(_line(name, res))
            dead = cluster.dead()
            if dead:
                record["dead_processes"] = dead
                raise StartFailed(
                    f"{', '.join(d['name'] for d in dead)} died during rate {rate:g}:\n"
                    + "\n".join(x for d in dead for x in d["log_tail"])
                )
            if res["completed"] == 0:  # the next rates would fail the same way
                first = res["errors"][0]["error"] if res["errors"] else "?"
                raise StartFailed(f"every request at rate {rate:g} failed, e.g.: {first}")
            write_doc(doc, out)
        record["status"] = "done"
    except StartFailed as e:
        record["status"] = "failed"
        record["error"] = str(e)
        record.setdefault("servers", [p.describe() for p in cluster.procs])
        _say(f"{name}: FAILED: {e}")
    except Exception as e:  # keep the JSON and stop the servers whatever went wrong
        import traceback

        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()[-4000:]
        for p in cluster.procs:
            if p.launched is not None:
                record.setdefault("log_tails", {})[p.name] = p.tail(20)
        _say(f"{name}: FAILED: {record['traceback']}")
    except BaseException:  # Ctrl-C, SIGTERM: record, stop, re-raise
        record["status"] = "interrupted"
        raise
    finally:
        _say(f"{name}: stopping")
        cluster.stop()
        record["finished"] = _now()
        write_doc(doc, out)


def _line(name: str, r: dict) -> str:
    lat, good = r["latency_ms"], r.get("goodput") or {}

    def f(x, digits=1):
        return "-" if x is None else f"{x:.{digits}f}"

    return (
        f"{name}: rate {r['request_rate']:g}: {r['completed']}/{r['num_prompts']} ok, "
        f"{f(r['request_throughput'], 2)} req/s, {f(r['output_throughput'], 0)} out tok/s, "
        f"p99 ITL {f(lat['itl']['p99'])} ms, p99 TTFT {f(lat['ttft']['p99'])} ms, "
        f"p99 TPOT {f(lat['tpot']['p99'])} ms, goodput {f(good.get('request_goodput'), 2)} req/s"
    )


def _say(message: str) -> None:
    print(f"[pd_vs_colocated {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    deadline = start + args.time_budget_s
    signal.signal(signal.SIGTERM, _on_sigterm)
    host = host_info()
    if not args.cpu_smoke and len(host.get("cards", [])) < 2:
        _say(f"needs 2 GPUs, this host has {host.get('cards')} ({host.get('error', '')[-500:]})")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="pd-vs-colocated-"))
    try:
        if args.cpu_smoke and not args.model_path and not args.model_config:
            model_args: list[str] = []  # the embedded SmolLM2-135M
            model = {"architecture": "embedded SmolLM2-135M (GGUF)", "weights": "real"}
        elif args.model_path:
            model_args = ["--model-path", args.model_path]
            config_file = Path(args.model_path) / "config.json"
            model = model_summary(json.loads(config_file.read_text()))
            model["weights"] = f"loaded from {args.model_path}"
        else:
            args.model_config = args.model_config or str(CONFIG_8B)
            folder = make_model_dir(args.model_config, workdir / "model")
            config = json.loads((folder / "config.json").read_text())
            context = math.ceil((args.input_lens[1] + args.output_lens[1] + 64) / 1024) * 1024
            model_args = ["--model-path", str(folder), "--load-format", "dummy"]
            dtype = "float32" if args.cpu_smoke else "bfloat16"
            model_args += ["--dtype", dtype, "--context-length", str(context)]
            model = model_summary(config)
            model["weights"] = f"random (--load-format dummy), {dtype}"
            model["config_file"] = str(Path(args.model_config).resolve())
            model["context_length"] = context
        doc = new_doc(args, host, model)
        out = Path(args.out)
        if args.merge and out.is_file():
            old = json.loads(out.read_text())
            kept = {k: v for k, v in old.get("configs", {}).items() if k not in args.configs}
            doc["configs"].update(kept)
            doc["merged_configs_from_earlier_run"] = sorted(kept)
        write_doc(doc, out)
        _say(f"cards {host.get('cards')}; configs {args.configs}; rates {args.rates}; out {out}")
        for i, name in enumerate(args.configs):
            first = min(args.rates)
            need = STARTUP_ESTIMATE_S + prompts_for_rate(args, first) / first
            left = deadline - TEARDOWN_RESERVE_S - time.monotonic()
            if i > 0 and left < need:
                doc["configs"][name] = {
                    "description": DESCRIPTIONS[name],
                    "status": "skipped",
                    "error": f"time budget: {left:.0f}s left, start-up and one rate need "
                    f"~{need:.0f}s (run it alone with --configs {name} --merge)",
                    "results": {},
                }
                write_doc(doc, out)
                _say(f"{name}: skipped (time budget)")
                continue
            run_config(name, args, doc, model_args, deadline)
        doc["total_seconds"] = round(time.monotonic() - start, 1)
        write_doc(doc, out)
        _print_summary(doc)
        _say(f"wrote {out} in {doc['total_seconds']}s")
        return 0 if all(doc["configs"][n]["status"] == "done" for n in args.configs) else 1
    except (KeyboardInterrupt, Terminated):
        _say("interrupted; servers stopped, partial results kept")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _print_summary(doc: dict) -> None:
    for e in doc["summary"]["per_rate"]:
        parts = [f"rate {e['request_rate']:g}"]
        for key in ("pd_vs_colocated", "conditional_vs_pd", "conditional_vs_colocated"):
            c = e.get(key)
            if c:
                itl, good = c["p99_itl_ratio"], c["goodput_ratio"]
                parts.append(
                    f"{key}: p99 ITL x{'-' if itl is None else f'{itl:.2f}'}, "
                    f"goodput x{'-' if good is None else f'{good:.2f}'}"
                )
        _say("; ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
