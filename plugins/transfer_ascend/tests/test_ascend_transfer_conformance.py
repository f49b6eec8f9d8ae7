"""The ascend engine passes pdcore's transfer conformance kit over the loopback binding.

The loopback ``mf_adapter`` moves real bytes between processes over TCP with
memfabric's names and return codes, so the kit runs on any CPU host. What it
checks is the plugin's side of the contract (threads, failures, deadlines,
close); memfabric's own behaviour on NPUs is not shown here.
"""

import pytest
from pdcore_transfer_ascend.testing import loopback_mf

from pdcore.testing import TransferBackendSuite
from pdcore.up.ports import pick_port


@pytest.fixture(scope="module", autouse=True)
def loopback_store():
    """A config store in this process; its URL reaches the kit's peers through the
    environment they inherit."""
    url = f"tcp://127.0.0.1:{pick_port()}"
    assert loopback_mf.create_config_store(url) == 0, f"could not start a store at {url}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ASCEND_MF_STORE_URL", url)
        env.setenv("ASCEND_MF_TRANSFER_PROTOCOL", "sdma")
        yield url


class TestAscendLoopbackConformance(TransferBackendSuite):
    backend_name = "ascend"
    factory_path = "pdcore_transfer_ascend.testing.loopback_mf:loopback_engine"
    deadline_option = None  # memfabric's writes end at its own socket timeout
    transfer_deadline_s = loopback_mf.TIMEOUT_S
    dead_peer_timeout_s = loopback_mf.TIMEOUT_S
