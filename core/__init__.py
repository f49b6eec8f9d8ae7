"""pdcore: an LLM serving core built around prefill/decode disaggregation.

Hardware (platforms, attention kernels) and KV transport (transfer engines) come
from plugins discovered through the ``pdcore`` entry-point group; see
``pdcore.registry``. Importing this package is cheap: no torch, no vendor library.
"""

__version__ = "0.1.0"
