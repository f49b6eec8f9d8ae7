"""Two real gloo ranks on 127.0.0.1 that join with given secrets and run one scenario.

``run_pair(secrets, scenario)`` spawns rank 0 and rank 1; each calls ``init_tp``
with its own secret, then runs the scenario (``"join"``: nothing more;
``"trade"``: ``_trade``) and reports what it returned or the error it raised
(``"ErrorType: message"``), per rank.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue

from e2e.server_process import free_port

STEP_TOKENS = [11, 12, 13, 14, 15, 21]


class Planted:
    """Unpickling this runs ``os.makedirs(path)``: proof that a rank unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _one_step(rank: int):
    """The leader sends one prefill step; the follower returns the plan it rebuilt."""
    from pdcore.engine.step_delta import PlanMirror, PlanSender
    from pdcore.engine.step_plan import StepPlan

    if rank == 0:
        plan = StepPlan(False, STEP_TOKENS, [0, 0], [5, 1], [[3, 4], [7]], [True, True])
        sender = PlanSender()
        sender.send(sender.delta(plan, [object(), object()]))
        return "sent"
    got = PlanMirror(page_size=4).receive()
    return {"tokens": got.tokens, "pages": got.pages, "extend_lens": got.extend_lens}


def _garbage(rank: int, payload: bytes):
    """The leader puts raw bytes on the wire; the follower tries to read a step."""
    from pdcore.distributed.wire import broadcast_bytes
    from pdcore.engine.step_delta import PlanMirror

    if rank == 0:
        broadcast_bytes(payload)
        return "sent"
    try:
        return PlanMirror(page_size=4).receive()
    except Exception as e:  # the bytes were consumed: both ranks stay in step
        return f"{type(e).__name__}: {e}"


def _trade(rank: int, marker: str) -> dict:
    """A well-formed step, then garbage, then a pickle, each where a step belongs."""
    return {
        "one step": _one_step(rank),
        "garbage": _garbage(rank, b"\xc1\x00not msgpack at all"),
        "pickle": _garbage(rank, pickle.dumps(Planted(marker))),
    }


def _rank_main(rank, port, secret, scenario, marker, results) -> None:
    import torch

    torch.set_num_threads(1)
    from pdcore.distributed.state import destroy_tp, init_tp

    try:
        init_tp("gloo", f"tcp://127.0.0.1:{port}", rank, 2, secret=secret)
        result = _trade(rank, marker) if scenario == "trade" else "joined"
        results.put((rank, result))
    except Exception as e:
        results.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        destroy_tp()


def run_pair(secrets: tuple, scenario: str, marker: str = "", timeout: float = 120) -> dict:
    """``{rank: result or "ErrorType: message"}``; raises if a rank does not report
    within ``timeout`` seconds (a hang is a failure, never a wait)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, port, secrets[r], scenario, marker, results))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in procs:
            rank, result = results.get(timeout=timeout)
            got[rank] = result
    except queue.Empty:
        raise AssertionError(f"ranks hung: only {sorted(got)} reported in {timeout}s") from None
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return got
