"""The small-batch linear kernel and its per-shape choice (pdcore_cuda.small_linear)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def rand(*shape, dtype=torch.bfloat16):
    return (torch.randn(*shape, device="cuda") / shape[-1] ** 0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 16, 17, 32, 48, 64])
@pytest.mark.parametrize("n,k", [(4096, 4096), (1000, 1030), (6144, 4096), (4096, 14336)])
def test_small_linear_matches_a_float32_reference(dtype, rows, n, k):
    from pdcore_cuda.small_linear import small_linear

    x, w = rand(rows, k, dtype=dtype), rand(n, k, dtype=dtype)
    want = x.float() @ w.float().T
    got = small_linear(x, w)
    assert got.shape == (rows, n) and got.dtype == dtype
    err = ((got.float() - want).norm() / want.norm()).item()
    assert err < 1e-2, f"relative error {err:.2e} for rows={rows} n={n} k={k}"


def test_more_than_max_rows_is_refused():
    from pdcore_cuda.small_linear import MAX_ROWS, small_linear

    with pytest.raises(ValueError, match="small_linear"):
        small_linear(rand(MAX_ROWS + 1, 64), rand(64, 64))


def test_the_choice_is_timed_once_per_shape_and_both_answers_agree():
    from pdcore_cuda.small_linear import SmallLinear

    linear = SmallLinear()
    x, w = rand(1, 4096), rand(4096, 4096)
    first = linear(x, w)
    again = linear(x, w)
    key = (1, 4096, 4096, torch.bfloat16)
    assert key in linear.choice and key in linear.timings, "the shape was not timed"
    cublas_s, triton_s = linear.timings[key]
    assert 0 < cublas_s < 1e-3 and 0 < triton_s < 1e-3, linear.timings
    assert torch.equal(first, again), "the same choice must give the same result"
    ref = torch.nn.functional.linear(x, w)
    torch.testing.assert_close(first, ref, rtol=2e-2, atol=2e-3)
    print(f"4096x4096 at batch 1: cuBLAS {cublas_s * 1e6:.1f} us, Triton {triton_s * 1e6:.1f} us")


def test_ineligible_inputs_go_to_cublas_untimed():
    from pdcore_cuda.small_linear import SmallLinear

    linear = SmallLinear()
    x, w = rand(65, 256), rand(128, 256)  # too many rows
    torch.testing.assert_close(linear(x, w), torch.nn.functional.linear(x, w))
    x32, w32 = rand(2, 256, dtype=torch.float32), rand(128, 256, dtype=torch.float32)
    torch.testing.assert_close(linear(x32, w32), torch.nn.functional.linear(x32, w32))
    assert not linear.choice, "ineligible shapes must not be timed"


def test_an_untimed_shape_under_graph_capture_uses_cublas():
    from pdcore_cuda.small_linear import SmallLinear

    linear = SmallLinear()
    x, w = rand(2, 512), rand(512, 512)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        torch.nn.functional.linear(x, w)  # cuBLAS workspace outside the capture
        with torch.cuda.graph(graph, stream=stream):
            out = linear(x, w)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, torch.nn.functional.linear(x, w))
    assert not linear.choice, "no timing may happen inside a capture"


def test_a_failed_timing_keeps_cublas(monkeypatch):
    import pdcore_cuda.small_linear as small

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("no room for the weight copies")

    monkeypatch.setattr(small, "graph_time", out_of_memory)
    linear = small.SmallLinear()
    x, w = rand(1, 256), rand(256, 256)
    torch.testing.assert_close(linear(x, w), torch.nn.functional.linear(x, w))
    assert linear.choice[(1, 256, 256, torch.bfloat16)] is False, "cuBLAS must stay"
