"""PD with prefill and decode parallelized differently (real servers, gloo ranks).

The tiny Qwen3 checkpoint has 2 KV heads. Prefill TP=2 -> decode TP=1: the
prefill leader gathers both ranks' heads and writes decode's single rank whole
pages. Prefill TP=1 -> decode TP=2: the leader stages each decode rank's head
into a contiguous block and writes it to that rank's own engine. Both must
equal null mode token for token, move KV in bulk (never a descriptor per
token) and leave no page held on any side.
"""

from __future__ import annotations

import pytest
from e2e.pd_helpers import (
    assert_idle,
    assert_pd_equals,
    gen_body,
    pd_servers,
    room,
)

pytestmark = pytest.mark.timeout(900)

SHAPES = {"P tp2 -> D tp1": (2, 1), "P tp1 -> D tp2": (1, 2)}
N = 8


# Each shape over one engine (both engines run every shape in bench/bench_pd_tp.py):
# four server pairs would add minutes to CI for little extra coverage.
CASES = [("P tp2 -> D tp1", "mooncake"), ("P tp1 -> D tp2", "nixl")]


@pytest.mark.parametrize(("shape", "backend"), CASES)
def test_heterogeneous_tp_equals_null_mode(qwen3_path, prompts, null_outputs, shape, backend):
    p_tp, d_tp = SHAPES[shape]
    prefill, decode, port = pd_servers(
        qwen3_path,
        backend,
        prefill_args=("--tp-size", str(p_tp)),
        decode_args=("--tp-size", str(d_tp)),
    )
    pd = {"bootstrap_host": "127.0.0.1", "bootstrap_port": port}
    try:
        bodies = [gen_body(p, bootstrap_room=room(), **pd) for p in prompts[:N]]
        assert_pd_equals(prefill, decode, bodies, null_outputs[:N], f"{shape} over {backend}")
        assert_idle(prefill, decode)
        stats = prefill.get("/get_server_info").json()["disaggregation"]
        # Bulk: at most one run per layer buffer (2 layers x K/V), decode rank and
        # page, plus the aux rows; one per token would be 16x that.
        pages = sum(-(-len(p) // 16) for p in prompts[:N])
        bound = pages * 4 * d_tp + N
        assert 0 < stats["runs_written"] <= bound, (
            f"{stats['runs_written']} transfer descriptors; per-page bound {bound}"
        )
    finally:
        prefill.stop()
        decode.stop()
