"""One benchmark run: ask the server what it serves, build the requests, warm up, run
the load with a progress bar, then write the report, plots and summary."""

from __future__ import annotations

import asyncio
import functools
import math
import sys
from collections.abc import Callable

from pdcore.benchserve import client, datasets, lengths, profile, report
from pdcore.benchserve.client import ClientOptions, ServerError
from pdcore.benchserve.datasets import RequestSpec
from pdcore.benchserve.load import LoadRun, run_load, warm_up
from pdcore.benchserve.progress import Progress
from pdcore.benchserve.tokenizer import TextTokenizer, load_tokenizer


def run_benchmark(args, prog: str = "pdcore bench serving") -> int:
    """Exit status: 0 if any measured request succeeded, 1 if none did."""
    say = functools.partial(_note, prog)
    server = asyncio.run(_server_info(args.base_url))
    # Prompts are built with no connection open: a slow tokenizer load blocks the event
    # loop, and a keep-alive connection the server closed meanwhile would fail a request.
    tokenizer = functools.cache(lambda: _load_tokenizer(args.tokenizer, server, say))
    specs = make_requests(args, server, tokenizer, args.num_prompts, args.seed)
    warm = make_requests(args, server, tokenizer, args.warmup_requests, args.seed + 1)
    opts = ClientOptions(
        backend=args.backend,
        base_url=args.base_url,
        model=args.model or server.get("served_model_name"),
        ignore_eos=not args.disable_ignore_eos,
        extra_body=args.extra_body,
    )
    say(
        f"{args.backend} at {args.base_url} ({opts.model}): {len(specs)} {args.dataset_name} "
        f"requests, rate {_rate(args.request_rate)} req/s, "
        f"max concurrency {args.max_concurrency or 'unlimited'}"
    )
    say(
        lengths.header(
            args.dataset_name,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            [s.prompt_len for s in specs],
            [s.output_len for s in specs],
        )
    )
    run, traces = asyncio.run(_measure(args, opts, specs, warm, say))
    result = report.build(_config(args, opts.model), server, run)
    if traces is not None:
        result["profile"] = traces
    if args.plot_dir:
        from pdcore.benchserve.plots import write_plots

        result["plots"] = write_plots(result, args.plot_dir)
        for path in result["plots"]:
            say(f"wrote plot {path}")
    if args.output_file:
        report.write_json(result, args.output_file)
        say(f"wrote {args.output_file}")
    print(report.text_summary(result), flush=True)
    if result["summary"]["completed"] == 0:
        say(f"error: all {len(specs)} requests failed")
        return 1
    return 0


async def _server_info(base_url: str) -> dict:
    async with client.new_session() as session:
        return await client.server_info(session, base_url)


async def _measure(args, opts: ClientOptions, specs, warm, say) -> tuple[LoadRun, dict | None]:
    """Warm up (a warm-up where every request fails stops the run), then the timed run,
    traced by every worker's profiler with ``--profile`` (then also the trace files)."""
    async with client.new_session() as session:

        def send(spec: RequestSpec):
            return client.send(session, opts, spec)

        if warm:
            say(f"warming up with {len(warm)} request(s)")
            done = await warm_up(warm, send)
            if not any(r.success for r in done):
                raise ServerError(f"every warm-up request failed; the first: {done[0].error}")
        targets = await profile.workers(session, args.base_url) if args.profile else {}
        if targets:
            await profile.start(session, targets, args.profile_output_dir)
            say(f"profiling {len(targets)} worker(s): {', '.join(targets)}")
        progress = Progress(len(specs), "benchmark", enabled=not args.disable_progress)
        try:
            run = await run_load(
                specs,
                send,
                args.request_rate,
                args.max_concurrency,
                args.seed,
                on_done=lambda r: progress.update(r.success),
            )
        finally:
            progress.close()
            traces = await profile.stop(session, targets) if targets else None
        if traces is not None:
            _report_traces(traces, say)
        return run, traces


def _report_traces(traces: dict, say) -> None:
    for role, files in traces.items():
        for line in files:
            say(f"profile error: {line}" if role == "errors" else f"{role} trace: {line}")


def make_requests(
    args, server: dict, tokenizer: Callable[[], TextTokenizer], num: int, seed: int
) -> list[RequestSpec]:
    """``num`` requests of ``--dataset-name``; calls ``tokenizer()`` only where one is needed."""
    if num == 0:
        return []
    if args.dataset_name == "synthetic-conversations":
        return datasets.synthetic_conversations(
            num,
            args.conversation_turns,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            seed,
        )
    if args.dataset_name == "sharegpt":
        datasets.load_sharegpt(args.dataset_path)  # file errors before a slow tokenizer load
        return datasets.sharegpt_requests(
            args.dataset_path, num, tokenizer(), seed, args.sharegpt_output_len
        )
    text = args.backend == "openai"
    vocab = server.get("vocab_size") or tokenizer().vocab_size
    return datasets.random_requests(
        num,
        args.random_input_len,
        args.random_output_len,
        args.random_range_ratio,
        vocab,
        seed,
        tokenizer() if text else None,
    )


def _load_tokenizer(given: str | None, server: dict, say) -> TextTokenizer:
    say("loading the tokenizer")
    return load_tokenizer(given, server)


def _config(args, model: str | None) -> dict:
    keys = (
        "backend", "base_url", "tokenizer", "dataset_name", "dataset_path", "num_prompts",
        "random_input_len", "random_output_len", "random_range_ratio", "sharegpt_output_len",
        "conversation_turns", "max_concurrency", "warmup_requests", "seed", "slo_ttft_ms",
        "slo_tpot_ms",
    )  # fmt: skip
    config = {k: getattr(args, k) for k in keys}
    config["model"] = model
    config["request_rate"] = _rate(args.request_rate)
    config["ignore_eos"] = not args.disable_ignore_eos
    config["extra_request_body"] = args.extra_body
    return config


def _rate(rate: float) -> float | str:
    """``inf`` as the string "inf" (JSON has no infinity)."""
    return "inf" if math.isinf(rate) else rate


def _note(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
