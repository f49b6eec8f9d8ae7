"""With this folder on PYTHONPATH, a Python process becomes a fake Ascend host.

Python imports ``sitecustomize`` at startup, so a server and the engine process
it spawns both get, before any pdcore code runs: the fake ``torch_npu`` (its
operators checked like the NPU's and computed with torch) with one "NPU" whose
memory is host memory, and the loopback ``mf_adapter`` that moves KV bytes
between processes over TCP. Used by ``test_pd_ascend_fake.py`` only.
"""

from pdcore_ascend.testing import npu_host
from pdcore_transfer_ascend.testing import loopback_mf

npu_host.install()
loopback_mf.install()
