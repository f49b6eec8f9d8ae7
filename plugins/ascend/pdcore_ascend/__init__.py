"""pdcore's Ascend NPU plugin: the ``npu`` platform and the ``ascend`` / ``ascend-mla``
attention backends on torch_npu; registered via ``pdcore_ascend.plugin``."""
