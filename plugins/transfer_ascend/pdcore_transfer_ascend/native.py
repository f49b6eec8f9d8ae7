"""Finding memfabric's Python binding without importing it at registration time.

``mf_adapter`` (the standalone wheel SGLang documents) and ``memfabric_hybrid``
(the full package newer SGLang imports) export the same pybind class,
``_pymf_transfer.TransferEngine``; importing either dlopens memfabric's native
libraries, so it happens only in the availability check and the engine factory.
"""

from __future__ import annotations

import importlib

PRIMARY, FALLBACK = "mf_adapter", "memfabric_hybrid"


def import_transfer_engine():
    """memfabric's ``TransferEngine`` class; ImportError stating both modules' failures."""
    errors = []
    for module in (PRIMARY, FALLBACK):
        try:
            return importlib.import_module(module).TransferEngine
        except (ImportError, OSError, AttributeError) as e:
            errors.append(str(e))
    raise ImportError(f"{errors[0]} ({FALLBACK}: {errors[1]})")
