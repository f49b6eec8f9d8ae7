"""Finding memfabric's Python binding and its driver, without loading them at registration.

``mf_adapter`` (the standalone wheel SGLang documents) and ``memfabric_hybrid``
(the full package newer SGLang imports) export the same pybind class,
``_pymf_transfer.TransferEngine``, and ``create_config_store``; importing either
dlopens memfabric's native libraries, so it happens only in the availability
check, the configure hook and the engine factory.

memfabric refuses to initialize unless the Ascend driver is findable: it looks
for an ``.../driver/lib64`` entry on ``LD_LIBRARY_PATH`` and reads
``.../driver/version.info`` next to it (then logs "the current version of ascend
driver does not support mf!" if any of that fails). ``driver_problem`` repeats
the lookup, so the availability check can say so without initializing anything;
the version numbers themselves are left to memfabric.
"""

from __future__ import annotations

import importlib
import os
import types
from collections.abc import Mapping

PRIMARY, FALLBACK = "mf_adapter", "memfabric_hybrid"
DRIVER_LIB = "/driver/lib64"
VERSION_FILE = "/driver/version.info"
SET_ENV_HINT = "source /usr/local/Ascend/ascend-toolkit/set_env.sh"


def import_binding() -> types.ModuleType:
    """The first of mf_adapter / memfabric_hybrid that imports; ImportError naming both."""
    errors = []
    for module in (PRIMARY, FALLBACK):
        try:
            found = importlib.import_module(module)
            found.TransferEngine  # noqa: B018 - a module without it is not the binding
            return found
        except (ImportError, OSError, AttributeError) as e:
            errors.append(str(e))
    raise ImportError(f"{errors[0]} ({FALLBACK}: {errors[1]})")


def import_transfer_engine():
    """memfabric's ``TransferEngine`` class; ImportError stating both modules' failures."""
    return import_binding().TransferEngine


def driver_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why memfabric would not find the Ascend driver here, or None if it would."""
    environ = os.environ if environ is None else environ
    paths = [p for p in environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if not paths:
        return f"LD_LIBRARY_PATH is not set, so memfabric cannot find the driver ({SET_ENV_HINT})"
    roots = [p[: p.index(DRIVER_LIB)] for p in paths if DRIVER_LIB in p]
    if not roots:
        return f"no Ascend driver directory (*{DRIVER_LIB}) on LD_LIBRARY_PATH ({SET_ENV_HINT})"
    if not any(os.path.isfile(root + VERSION_FILE) for root in roots):
        return f"{roots[0]}{VERSION_FILE} does not exist"
    return None
