"""Run an engine as a TP group of real processes (gloo on 127.0.0.1) in tests.

``run_group(folder, size, prompts)`` spawns ``size`` ranks: each loads the
checkpoint's shard and builds an ``Engine``; rank 0 serves the prompts greedily
and returns per prompt ``(output ids, logprob per step, prompt logprobs)``; followers run
each forward the leader broadcasts, then stop when told.
"""

from __future__ import annotations

import multiprocessing as mp

from pdcore.up.ports import pick_port

_free_port = pick_port  # the rendezvous port, reserved like every test port


def _rank_main(folder, rank, size, port, prompts, max_new, max_total, results) -> None:
    import torch

    torch.set_num_threads(1)
    from pdcore.config import ServerArgs
    from pdcore.distributed.state import destroy_tp, init_tp
    from pdcore.engine.engine import Engine
    from pdcore.engine.io_struct import GenerateReq
    from pdcore.model.loader import load_model

    try:
        init_tp("gloo", f"tcp://127.0.0.1:{port}", rank, size)
        loaded = load_model(folder, torch.float32, "cpu", load_tokenizer=False)
        args = ServerArgs(
            model_path=folder, max_total_tokens=max_total, page_size=4, chunked_prefill_size=16,
            tp_size=size,
        )  # fmt: skip
        # The registry's torch backend for the model's KV kind (MHA, or MLA for DeepSeek).
        engine = Engine(loaded.model, loaded.config, args, None, "cpu")
        if rank > 0:
            while engine.runner.follow():
                pass
            return
        for i, ids in enumerate(prompts):
            sampling = {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}
            engine.add_request(GenerateReq(f"r{i}", ids, sampling, True, logprob_start_len=0))
        out = {f"r{i}": ([], [], []) for i in range(len(prompts))}
        done = set()
        while len(done) < len(prompts):
            for o in engine.step():
                assert hasattr(o, "token_ids"), f"engine error: {o}"
                out[o.rid][0].extend(o.token_ids)
                out[o.rid][1].extend(o.logprobs)
                out[o.rid][2].extend(o.input_logprobs[1:])  # the first is None
                if o.finish_reason is not None:
                    done.add(o.rid)
        engine.kv_usage().check()
        engine.runner.stop_followers()
        outputs = [out[f"r{i}"] for i in range(len(prompts))]
        results.put({"outputs": outputs, "retractions": engine.scheduler.num_retractions})
    except BaseException as e:
        results.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise
    finally:
        destroy_tp()


def run_group(
    folder: str,
    size: int,
    prompts: list[list[int]],
    max_new: int = 8,
    max_total_tokens: int = 2048,
    stats: dict | None = None,
):
    """Rank 0's ``(output ids, logprobs, prompt logprobs)`` per prompt; ``stats``
    (if given) gets the leader's ``retractions``."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(folder, r, size, port, prompts, max_new, max_total_tokens, results),
        )
        for r in range(size)
    ]
    for p in procs:
        p.start()
    try:
        got = results.get(timeout=240)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    if isinstance(got, str):
        raise AssertionError(got)
    if stats is not None:
        stats["retractions"] = got["retractions"]
    return got["outputs"]
