"""Rotary position embedding with the scaling variants of HF configs.

The inverse frequencies are computed exactly as transformers'
``ROPE_INIT_FUNCTIONS`` do (same float32 ops, same order), so positions rotate
bit-for-bit like the reference. Positions are arbitrary per token: cos/sin are
computed for the given positions rather than sliced from a table, which costs
little next to the layers and is shared by all of them.
"""

from __future__ import annotations

import math

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "freq_factors")


def _base_exponents(dim: int) -> torch.Tensor:
    return torch.arange(0, dim, 2, dtype=torch.int64).float() / dim


def _default(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** _base_exponents(dim))


def _llama3(base: float, dim: int, params: dict, max_pos: int) -> torch.Tensor:
    inv_freq = _default(base, dim)
    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    old_context_len = params.get("original_max_position_embeddings", max_pos)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(base: float, dim: int, params: dict, max_pos: int) -> tuple[torch.Tensor, float]:
    original = params.get("original_max_position_embeddings", max_pos)
    factor = params.get("factor") or max_pos / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(
                _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
            )
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # share of the unscaled frequency per dimension
    return interpolation * (1 - keep) + extrapolation * keep, attention_factor


class RotaryEmbedding:
    """cos/sin for token positions; a plain object so meta-device model builds keep it.

    ``rope_scaling``: None or ``{"rope_type": ..., **params}`` as in
    ``ModelConfig``. ``dynamic`` (NTK) recomputes the base per token from
    ``position + 1``: identical to transformers below ``max_position_embeddings``
    and to its token-by-token decoding beyond it (a long prefill there uses the
    batch's maximum length instead, which no paged cache can reproduce).
    ``freq_factors`` divides each frequency by a factor (llama.cpp's
    ``rope_freqs`` tensor of Llama 3.x GGUF files).
    """

    def __init__(
        self,
        head_dim: int,
        rope_theta: float,
        rope_scaling: dict | None = None,
        max_position_embeddings: int = 4096,
    ):
        params = dict(rope_scaling or {})
        self.rope_type = params.get("rope_type", "default")
        self.head_dim = head_dim
        self.base = rope_theta
        self.params = params
        self.max_position_embeddings = max_position_embeddings
        self.attention_scaling = 1.0
        try:
            self.inv_freq = self._init_inv_freq()
        except KeyError as e:
            raise ValueError(
                f"rope scaling {self.rope_type!r} needs the parameter {e.args[0]!r}"
            ) from None
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _init_inv_freq(self) -> torch.Tensor:
        base, dim, params = self.base, self.head_dim, self.params
        with torch.device("cpu"):
            if self.rope_type in ("default", "dynamic"):
                return _default(base, dim)
            if self.rope_type == "linear":
                return _default(base, dim) / params["factor"]
            if self.rope_type == "llama3":
                return _llama3(base, dim, params, self.max_position_embeddings)
            if self.rope_type == "yarn":
                inv_freq, self.attention_scaling = _yarn(
                    base, dim, params, self.max_position_embeddings
                )
                return inv_freq
            if self.rope_type == "freq_factors":
                factors = torch.tensor(params["factors"], dtype=torch.float32)
                return _default(base, dim) / factors
        raise ValueError(
            f"Unsupported rope scaling type {self.rope_type!r}. "
            f"Supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )

    def _dynamic_inv_freq(self, positions: torch.Tensor) -> torch.Tensor:
        """Per-token NTK frequencies ``[T, dim/2]`` (transformers' formula, seq_len = pos+1)."""
        dim, max_pos, factor = self.head_dim, self.max_position_embeddings, self.params["factor"]
        seq_len = torch.clamp(positions + 1, min=max_pos)
        base = self.base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        exps = _base_exponents(dim).to(positions.device)
        return 1.0 / (base[:, None] ** exps[None, :])

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and sin ``[T, head_dim]`` for int64 ``positions`` ``[T]``."""
        dynamic = self.rope_type == "dynamic" and positions.numel() > 0  # 0: an idle DP group
        if dynamic and int(positions.max()) >= self.max_position_embeddings:
            freqs = positions[:, None].float() * self._dynamic_inv_freq(positions)
        else:
            inv_freq = self._on_device.get(positions.device)
            if inv_freq is None:
                inv_freq = self._on_device[positions.device] = self.inv_freq.to(positions.device)
            freqs = positions[:, None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        if self.attention_scaling == 1.0:  # two launches fewer per decode step
            return emb.cos(), emb.sin()
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, head_dim]`` (half-split pairs, as HF's ``rotate_half``)."""
    cos, sin = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)
