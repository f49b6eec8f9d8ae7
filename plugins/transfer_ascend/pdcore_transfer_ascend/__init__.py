"""pdcore's ``ascend`` KV transfer engine, on memfabric's ``mf_adapter.TransferEngine``.

It mirrors how SGLang drives the same library (``sglang/srt/disaggregation/
ascend/transfer_engine.py`` and ``conn.py``): config-store URL and protocol from
``ASCEND_MF_STORE_URL`` / ``ASCEND_MF_TRANSFER_PROTOCOL``, ``initialize(store_url,
session_id, role, npu_id, TransDataOpType)``, ``batch_register_memory`` and
``batch_transfer_sync_write``. It was NOT run on Ascend hardware when written: the
tests drive it through a fake ``mf_adapter`` that records the calls.
"""
