"""Which way of copying out of a CUDA IPC mapping reaches NVLink speed?

The parent shares 2 GiB on GPU 0 through pdcore's driver helpers (``cuIpcGetMemHandle``)
and through torch (``torch.multiprocessing``); a child copies it into its own GPU 1
buffer in each way below, 5 times each, and reports GB/s:

* ``torch_shared``: the tensor torch shared, ``dst.copy_(src)`` (the known-fast case);
* ``driver_open_ctx{0,1}_stream{0,1}``: the handle opened with ``cuIpcOpenMemHandle``
  while GPU 0's or GPU 1's primary context is current (``torch.cuda.set_device``), then
  ``cuMemcpyAsync`` on a stream of GPU 0 or 1, with and without a thread of its own;
* ``peer_enabled_*``: the same after a torch cross-device copy enabled peer access.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
N = 2 << 30


def rate(fn, sync) -> float:
    fn()
    sync()
    out = []
    for _ in range(5):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return N / statistics.median(out) / 1e9


def child(q, shared, handle: bytes, offset: int) -> None:
    from pdcore_cuda import cuda_driver as drv

    res = {}
    torch.cuda.set_device(1)
    dst = torch.empty(N, dtype=torch.uint8, device="cuda:1")
    res["torch_shared"] = rate(lambda: dst.copy_(shared), torch.cuda.synchronize)

    def driver_variant(open_dev: int, stream_dev: int, own_thread: bool) -> float:
        box = {}

        def body():
            torch.cuda.set_device(open_dev)
            torch.zeros(1, device=f"cuda:{open_dev}")  # context current in this thread
            base = drv.open_ipc_handle(handle)
            stream = torch.cuda.Stream(stream_dev)
            try:
                box["r"] = rate(
                    lambda: drv.copy_async(dst.data_ptr(), base + offset, N, stream.cuda_stream),
                    stream.synchronize,
                )
            finally:
                drv.close_ipc_handle(base)

        if own_thread:
            t = threading.Thread(target=body)
            t.start()
            t.join()
        else:
            body()
        return box["r"]

    for tag in ("", "peer_enabled_"):
        if tag:  # what torch's copy does first: GPU 0 may access GPU 1 and back
            torch.zeros(1, device="cuda:1").copy_(torch.zeros(1, device="cuda:0"))
            torch.zeros(1, device="cuda:0").copy_(torch.zeros(1, device="cuda:1"))
        for open_dev in (0, 1):
            for stream_dev in (0, 1):
                for own in (False, True):
                    name = f"{tag}driver_open_ctx{open_dev}_stream{stream_dev}"
                    name += "_thread" if own else ""
                    try:
                        res[name] = driver_variant(open_dev, stream_dev, own)
                    except Exception as e:  # a variant may be refused by the driver
                        res[name] = f"{type(e).__name__}: {e}"
    res["verified"] = bool(torch.equal(dst[:: 1 << 20].cpu(), shared[:: 1 << 20].cpu()))
    q.put(res)


def main() -> None:
    from pdcore_cuda import cuda_driver as drv

    ctx = mp.get_context("spawn")
    src = torch.randint(0, 255, (N,), dtype=torch.uint8, device="cuda:0")
    base, _ = drv.allocation_of(src.data_ptr())
    handle = drv.ipc_handle(base)
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q, src, handle, src.data_ptr() - base))
    p.start()
    res = q.get(timeout=400)
    p.join(60)
    out = {"card": torch.cuda.get_device_name(0), "GBps": res}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
