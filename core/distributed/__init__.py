"""Tensor-parallel process group of one engine: rank, size and collectives."""
