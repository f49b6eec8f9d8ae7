"""Architecture name (HF ``architectures[0]``) -> model class."""

from __future__ import annotations

from pdcore.model.base import CausalLM
from pdcore.model.deepseek_v2 import DeepseekV2ForCausalLM, DeepseekV3ForCausalLM
from pdcore.model.llama import LlamaForCausalLM
from pdcore.model.mistral import MistralForCausalLM
from pdcore.model.qwen2 import Qwen2ForCausalLM
from pdcore.model.qwen3 import Qwen3ForCausalLM

MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "DeepseekV2ForCausalLM": DeepseekV2ForCausalLM,
    "DeepseekV3ForCausalLM": DeepseekV3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def supported_architectures() -> list[str]:
    return sorted(MODEL_CLASSES)


def get_model_class(architecture: str) -> type[CausalLM]:
    """The class for ``architecture``; ValueError lists the supported ones."""
    cls = MODEL_CLASSES.get(architecture)
    if cls is None:
        raise ValueError(
            f"Unsupported architecture {architecture!r}. "
            f"Supported: {', '.join(supported_architectures())}"
        )
    return cls
