"""The suite runs on two pytest-xdist workers by default (CI has two cores).

Plain ``python -m pytest`` (what ``make test`` runs) gets ``-n 2`` from here rather
than from ``addopts``, so that ``-p no:xdist`` still works (an ``-n`` in ``addopts``
is an unknown option without the plugin). ``-n 0`` runs in one process, ``-n N`` on
N workers; ``--pdb`` runs in one process too.

A worker takes whole groups of tests (``GroupScheduling``): every test module is its
own group, so a module's shared server starts once, and a few groups join several
modules whose tests must not run against each other (``SERIAL_GROUPS``). Groups come
from test paths on the controller, so no marker is needed in the test files.
"""

from __future__ import annotations

import pytest

DEFAULT_WORKERS = 2

# Group -> the test paths (folders end in "/") that run one after another on one
# worker. "chaos" and "fuzz" measure failure bounds and drive servers hard; "timing"
# holds modules whose tests assert wall-clock bounds of a few seconds, kept from
# running against each other (the other worker still runs the rest of the suite).
SERIAL_GROUPS = {
    "chaos": ("tests/chaos/",),
    "fuzz": ("tests/fuzz/",),
    "timing": (
        "tests/disaggregation/test_protocol_units.py",
        "tests/disaggregation/test_pd_protocol.py",
        "tests/router/test_router_pd.py",
        "tests/e2e/test_pd_faults.py",
        "plugins/transfer_ascend/tests/test_transfer_ascend_engine.py",
        "plugins/transfer_mooncake/tests/test_mooncake_engine.py",
        "plugins/transfer_nixl/tests/test_nixl_engine.py",
    ),
    # The transfer conformance kits stop, kill and time peer processes against a
    # deadline: one kit at a time.
    "transfer_kit": (
        "plugins/transfer_ascend/tests/test_ascend_transfer_conformance.py",
        "plugins/transfer_mooncake/tests/test_mooncake_conformance.py",
        "plugins/transfer_nixl/tests/test_nixl_conformance.py",
        "tests/example_plugin/tests/test_example_conformance.py",
        "tests/test_conformance_kit_catches.py",
    ),
}


def group_of(nodeid: str) -> str:
    """The group of a test: its serial group, else its module's path."""
    path = nodeid.split("::", 1)[0]
    for group, prefixes in SERIAL_GROUPS.items():
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes):
            return group
    return path


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads -n and --dist
def pytest_cmdline_main(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    option = config.option
    if option.numprocesses is None and not (option.usepdb or option.collectonly):
        option.numprocesses = DEFAULT_WORKERS
    if option.dist == "no" and option.numprocesses:  # -n given, --dist not
        option.dist = "loadscope"  # with the groups below, see pytest_xdist_make_scheduler


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent with -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.option.dist != "loadscope":
        return None  # another --dist was asked for: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's loadscope with ``group_of`` as the scope of a test."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)
