"""Turn a model path into a ready ``CausalLM``, its ``ModelConfig`` and tokenizer.

Accepted: a HF folder (config.json + ``model.safetensors`` or shards listed in
``model.safetensors.index.json``), a single ``.gguf`` file (or a folder holding
exactly one), or None for the embedded SmolLM2 GGUF. Everything is local: a
path that does not exist is an error, never a hub download. Every failure is a
``ModelLoadError`` naming the path and, where one is at fault, the tensor.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from pdcore.errors import PdcoreError
from pdcore.model.base import CausalLM
from pdcore.model.config import ModelConfig
from pdcore.model.embedded import embedded_model_path
from pdcore.model.gguf_loader import gguf_model_config, gguf_weights, open_gguf
from pdcore.model.registry import get_model_class
from pdcore.model.rotary import RotaryEmbedding
from pdcore.model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class ModelLoadError(PdcoreError):
    """The model at a path cannot be loaded; the message says which file or tensor."""


@dataclass
class LoadedModel:
    model: CausalLM
    config: ModelConfig
    tokenizer: Tokenizer | None  # None when loaded with load_tokenizer=False
    path: str  # the resolved file or folder


def resolve_model_path(model_path: str | None) -> str:
    """The GGUF file or HF folder that ``model_path`` names (None = embedded model)."""
    if model_path is None:
        try:
            return embedded_model_path()
        except FileNotFoundError as e:
            raise ModelLoadError(str(e)) from None
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"Model path {model_path!r} does not exist (pdcore loads local files only; "
            f"download hub models first)"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"Model path {model_path!r} is a file but not a .gguf; "
                f"pass a .gguf file or a HF model folder"
            )
        return str(path)
    if (path / "config.json").is_file():
        return str(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return str(ggufs[0])
    hint = f" and {len(ggufs)} .gguf files (pass one of them)" if ggufs else ""
    raise ModelLoadError(f"Model folder {model_path!r} has no config.json{hint}")


def _is_gguf(path: str) -> bool:
    return path.endswith(".gguf")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Cannot read {path}: {e}") from None


def _hf_config(folder: str) -> ModelConfig:
    raw = _read_json(Path(folder) / "config.json")
    _check_architecture(folder, raw)
    try:
        config = ModelConfig.from_hf(raw)
    except ValueError as e:
        raise ModelLoadError(f"{folder}/config.json: {e}") from None
    gen_path = Path(folder) / "generation_config.json"
    if gen_path.is_file():
        eos = _read_json(gen_path).get("eos_token_id")
        extra = [eos] if isinstance(eos, int) else list(eos or [])
        config.eos_token_ids = sorted(set(config.eos_token_ids) | set(extra))
    return config


def _check_architecture(folder: str, raw: dict) -> None:
    """Refuse an architecture pdcore does not build in, first (its config may not parse),
    naming it; one that ships custom code (``auto_map``) is told that code never runs."""
    archs = raw.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    if not isinstance(arch, str):
        return  # ModelConfig.from_hf names what is missing
    try:
        get_model_class(arch)
    except ValueError as e:
        custom = (
            " Its config.json names custom code (auto_map), and pdcore never runs code "
            "from the model folder (--trust-remote-code does not change that)."
            if raw.get("auto_map")
            else ""
        )
        raise ModelLoadError(f"{folder}/config.json: {e}.{custom}") from None
    if raw.get("auto_map"):
        logger.info("%s/config.json: auto_map ignored, %s is built in", folder, arch)


def load_model_config(model_path: str | None) -> ModelConfig:
    """The ``ModelConfig`` alone (metadata only, no weights); raises ``ModelLoadError``."""
    path = resolve_model_path(model_path)
    config = _gguf_config(path) if _is_gguf(path) else _hf_config(path)
    _model_class(config, path)
    return config


def _gguf_config(path: str) -> ModelConfig:
    try:
        return gguf_model_config(open_gguf(path))
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None


def _model_class(config: ModelConfig, path: str) -> type[CausalLM]:
    """The class to build; also rejects RoPE variants early, before any weight is read."""
    try:
        RotaryEmbedding(
            config.head_dim,
            config.rope_theta,
            config.rope_scaling,
            config.max_position_embeddings,
        )
        return get_model_class(config.architecture)
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None


def _safetensors_files(folder: str) -> list[Path]:
    root = Path(folder)
    index = root / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        files = [root / name for name in sorted(set(weight_map.values()))]
        if not files:
            raise ModelLoadError(f"{index} lists no weight files")
        for file in files:
            if not file.is_file():
                raise ModelLoadError(f"{index} names {file.name}, which is missing")
        return files
    if (root / "model.safetensors").is_file():
        return [root / "model.safetensors"]
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files
    bins = sorted(p.name for p in root.glob("*.bin"))
    hint = f" (found {', '.join(bins)}: convert them to safetensors)" if bins else ""
    raise ModelLoadError(f"Model folder {folder!r} has no *.safetensors weights{hint}")


def _safetensors_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:
            raise ModelLoadError(f"Cannot read weights file {file}: {e}") from None


class _SkipInit(TorchFunctionMode):
    """Makes ``torch.nn.init`` calls no-ops while a model is built on the meta device.

    The weights are overwritten by the checkpoint anyway, and random init on meta
    tensors runs torch's Python reference ops, whose first use imports
    ``torch._dynamo``: about 2.4 s of CPU in every engine process for nothing."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _build(cls: type[CausalLM], config: ModelConfig, dtype: torch.dtype, device) -> CausalLM:
    """Construct without initializing (meta device, init calls skipped), then allocate
    on ``device``: every parameter is overwritten by the checkpoint, and the loader
    checks that."""
    with torch.device("meta"), _SkipInit():
        model = cls(config)
    return model.to(dtype=dtype).to_empty(device=device)


def load_model(
    model_path: str | None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    load_tokenizer: bool = True,
    load_format: str = "auto",
) -> LoadedModel:
    """Load weights (cast to ``dtype``, on ``device``) and, unless told not to, the tokenizer.

    ``load_format="dummy"`` (SGLang's): the architecture from ``config.json`` with
    seeded random weights made on ``device``, no checkpoint read (benchmarks).
    """
    path = resolve_model_path(model_path)
    if load_format == "dummy":
        return _dummy_model(path, dtype, device, load_tokenizer)
    if _is_gguf(path):
        try:
            reader = open_gguf(path)
            config = gguf_model_config(reader)
        except ValueError as e:
            raise ModelLoadError(f"{path}: {e}") from None
        cls = _model_class(config, path)
        weights = gguf_weights(reader, config)
    else:
        config = _hf_config(path)
        cls = _model_class(config, path)
        weights = _safetensors_weights(_safetensors_files(path))
    try:
        model = _build(cls, config, dtype, torch.device(device))
        model.load_weights(weights)
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    model.eval().requires_grad_(False)
    tokenizer = _load_tokenizer(path, config) if load_tokenizer else None
    logger.info("loaded %s (%s) from %s", config.architecture, dtype, path)
    return LoadedModel(model=model, config=config, tokenizer=tokenizer, path=path)


def _load_tokenizer(path: str, config: ModelConfig) -> Tokenizer:
    has_files = any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES)
    if not _is_gguf(path) and not has_files:
        raise ModelLoadError(
            f"Model folder {path!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
            f"pass load_tokenizer=False to load the weights alone"
        )
    try:
        return Tokenizer.from_pretrained(path, eos_token_ids=config.eos_token_ids)
    except Exception as e:
        raise ModelLoadError(f"Cannot load the tokenizer of {path}: {e}") from e


DUMMY_STD = 0.02  # HF's initializer_range default: logits stay finite in bf16


@torch.no_grad()
def _dummy_model(path: str, dtype: torch.dtype, device, load_tokenizer: bool) -> LoadedModel:
    """Random weights for ``path``'s architecture: every tensor from a generator seeded
    by its name, so the same shard gets the same values in every process."""
    import zlib

    if _is_gguf(path):
        raise ModelLoadError(f"{path}: --load-format dummy needs an HF folder with config.json")
    config = _hf_config(path)
    cls = _model_class(config, path)
    dev = torch.device(device)
    model = _build(cls, config, dtype, dev)
    for name, param in model.named_parameters():
        gen = torch.Generator(device=dev).manual_seed(zlib.crc32(name.encode()))
        if name.endswith("norm.weight") or "layernorm" in name:
            param.fill_(1.0)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.normal_(0.0, DUMMY_STD, generator=gen)
    model.eval().requires_grad_(False)
    tokenizer = _load_tokenizer(path, config) if load_tokenizer else None
    logger.info("random (dummy) %s weights (%s) for %s", config.architecture, dtype, path)
    return LoadedModel(model=model, config=config, tokenizer=tokenizer, path=path)
