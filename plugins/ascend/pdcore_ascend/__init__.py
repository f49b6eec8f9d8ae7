"""pdcore's Ascend NPU platform plugin; registered via ``pdcore_ascend.plugin``."""
