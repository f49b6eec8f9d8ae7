"""A valid decode ``EndpointInfo`` for protocol tests; override any field by keyword."""

from __future__ import annotations

from pdcore.disaggregation.protocol import (
    AuxLayout,
    EndpointInfo,
    KVLayout,
    compat_fields,
    compat_hash,
)


def endpoint_info(**over) -> EndpointInfo:
    base = dict(
        instance_id="x",
        role="decode",
        tp_rank=0,
        tp_size=1,
        page_size=4,
        kv_dtype="float32",
        layout=KVLayout(False, 2, 8, 2),
        model="m",
        transfer_backend="mooncake",
        transfer_metadata={"engine": "mooncake"},
        kv_buffers=[4096, 8192, 12288, 16384],
        page_bytes=256,
        num_pages=33,
        aux=AuxLayout(65536, 120, 8, 8),
        compat_hash="",
    )
    base.update(over)
    draft = EndpointInfo(**base)
    return EndpointInfo(**{**base, "compat_hash": compat_hash(compat_fields(draft))})
