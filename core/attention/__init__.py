"""Attention backends over the paged KV cache (seam: ``pdcore.attention.base``)."""
