"""Paged KV cache: page allocator, per-layer K/V pool and the radix prefix cache."""
