"""pdcore's ``nixl`` KV transfer engine, on NVIDIA NIXL's ``nixl._api.nixl_agent`` (UCX).

Metadata travels in pdcore's own handshake (no NIXL listener thread or etcd);
DRAM and VRAM; notifications ride on the transfer and reach the peer after the data.
"""
