"""Run engines under DP attention as real processes (gloo on 127.0.0.1) in tests.

``run_dp_group(folder, tp_size, dp_size, prompts_per_dp)`` spawns ``tp_size``
ranks in ``dp_size`` DP groups. Each DP leader serves its own prompts greedily
in lockstep with the other leaders (``Engine.dp_schedule``, ``dp_lockstep.trade``,
``Engine.dp_forward``, as the engine process does) until no group has tokens, then stops its
followers. Returns per DP rank ``(outputs, info)``: outputs as ``tp_ranks``
(output ids, logprob per step, prompt logprobs) and info with the forwards it joined, how many
of those it idled through, and its final KV usage.
"""

from __future__ import annotations

import multiprocessing as mp

from parallel.tp_ranks import _free_port


def _rank_main(folder, rank, size, dp, port, prompts_per_dp, max_new, results) -> None:
    import torch

    torch.set_num_threads(1)
    from pdcore.config import ServerArgs
    from pdcore.distributed.state import destroy_tp, init_tp, tp
    from pdcore.engine.dp_lockstep import trade
    from pdcore.engine.engine import Engine
    from pdcore.engine.io_struct import GenerateReq
    from pdcore.model.loader import load_model

    try:
        init_tp("gloo", f"tcp://127.0.0.1:{port}", rank, size, dp)
        info = tp()
        loaded = load_model(folder, torch.float32, "cpu", load_tokenizer=False)
        args = ServerArgs(
            model_path=folder, max_total_tokens=2048, page_size=4, chunked_prefill_size=16,
            tp_size=size, dp_size=dp, enable_dp_attention=True,
        )  # fmt: skip
        engine = Engine(loaded.model, loaded.config, args, None, "cpu")
        if not info.is_leader:
            while engine.runner.follow():
                pass
            return
        prompts = prompts_per_dp[info.dp_rank]
        for i, ids in enumerate(prompts):
            sampling = {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}
            engine.add_request(GenerateReq(f"r{i}", ids, sampling, True, logprob_start_len=0))
        idle = {"n": 0}
        run_idle = engine.runner.idle

        def counted_idle(counts):
            idle["n"] += 1
            run_idle(counts)

        engine.runner.idle = counted_idle
        out = {f"r{i}": ([], [], []) for i in range(len(prompts))}
        forwards = 0
        while True:
            batch = engine.dp_schedule()
            counts, _ = trade(batch.num_tokens if batch is not None else 0, False)
            if any(counts):
                forwards += 1
                engine.dp_forward(batch, counts)
            for o in engine.take_outputs():
                assert hasattr(o, "token_ids"), f"engine error: {o}"
                out[o.rid][0].extend(o.token_ids)
                out[o.rid][1].extend(o.logprobs)
                out[o.rid][2].extend(o.input_logprobs[1:])  # the first is None
            if not any(counts):
                break
        usage = engine.kv_usage()
        usage.check()
        if info.attn_size > 1:
            engine.runner.stop_followers()
        meta = {"forwards": forwards, "idle": idle["n"], "cached_pages": usage.cached}
        results.put((info.dp_rank, [out[f"r{i}"] for i in range(len(prompts))], meta))
    except BaseException as e:
        results.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise
    finally:
        destroy_tp()


def run_dp_group(
    folder: str, size: int, dp: int, prompts_per_dp: list[list[list[int]]], max_new: int = 8
) -> list[tuple[list, dict]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_rank_main, args=(folder, r, size, dp, port, prompts_per_dp, max_new, results)
        )
        for r in range(size)
    ]
    for p in procs:
        p.start()
    got = {}
    try:
        while len(got) < dp:
            item = results.get(timeout=240)
            if isinstance(item, str):
                raise AssertionError(item)
            got[item[0]] = item[1:]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return [got[d] for d in range(dp)]
