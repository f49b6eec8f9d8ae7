"""pdcore's ``mooncake`` KV transfer engine, on Mooncake's ``mooncake.engine.TransferEngine``.

P2P handshake metadata (no etcd), TCP on plain hosts and RDMA when an IB device
is given; DRAM everywhere, VRAM with a CUDA build of Mooncake. Mooncake delivers
no notifications, so the KV protocol must signal completion on its own channel.
"""
