"""pdcore's CUDA platform plugin (NVIDIA GPUs); registered via ``pdcore_cuda.plugin``."""
