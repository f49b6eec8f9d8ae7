"""Is a cross-process copy through CUDA IPC as fast as torch's in-process peer copy?

The parent allocates 2 GiB on GPU 0 and shares it with a child through torch's
CUDA IPC (``torch.multiprocessing``); the child copies it into its own buffer on
GPU 1 (a device-to-device copy whose source is IPC-mapped memory), in one copy
and in 64 chunks on 1 and on 4 streams. The parent also times its own peer copy
GPU 0 -> GPU 1. This tells whether NIXL/UCX's cuda_ipc rate is a limit of IPC
copies or of how UCX issues them.
"""

import json
import statistics
import time

import torch
import torch.multiprocessing as mp

N = 2 << 30


def timed(fn, dev, n=5):
    fn()
    torch.cuda.synchronize(dev)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(dev)
        out.append(time.perf_counter() - t)
    return N / statistics.median(out) / 1e9


def child(q, src):
    torch.cuda.set_device(1)
    dst = torch.empty(N, dtype=torch.uint8, device="cuda:1")
    res = {"one_copy": timed(lambda: dst.copy_(src), 1)}
    chunks = 64
    step = N // chunks
    streams = [torch.cuda.Stream(device=1) for _ in range(4)]

    def chunked(k):
        for i in range(chunks):
            with torch.cuda.stream(streams[i % k]):
                dst[i * step : (i + 1) * step].copy_(src[i * step : (i + 1) * step])
        for s in streams[:k]:
            s.synchronize()

    res["64_chunks_1_stream"] = timed(lambda: chunked(1), 1)
    res["64_chunks_4_streams"] = timed(lambda: chunked(4), 1)
    res["verified"] = bool(torch.equal(dst[:: 1 << 20].cpu(), src[:: 1 << 20].cpu()))
    q.put(res)


def push_child(q, done):
    """Child owning a GPU 1 buffer that the parent writes into (push)."""
    torch.cuda.set_device(1)
    dst = torch.zeros(N, dtype=torch.uint8, device="cuda:1")
    q.put(dst)
    done.wait(300)


def main():
    ctx = mp.get_context("spawn")
    src = torch.randint(0, 255, (N,), dtype=torch.uint8, device="cuda:0")
    dst = torch.empty(N, dtype=torch.uint8, device="cuda:1")
    peer = timed(lambda: dst.copy_(src), 0)
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q, src))
    p.start()
    res = q.get(timeout=300)
    p.join(60)
    q2, done = ctx.Queue(), ctx.Event()
    p2 = ctx.Process(target=push_child, args=(q2, done))
    p2.start()
    remote = q2.get(timeout=300)  # GPU 1 memory of the child, mapped here
    push = timed(lambda: remote.copy_(src), 0)
    done.set()
    p2.join(60)
    out = {
        "card": torch.cuda.get_device_name(0),
        "torch_peer_copy_GBps": peer,
        "ipc_pull_in_child_GBps": res,
        "ipc_push_from_parent_GBps": push,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
