"""Inside pdcore's suite, install the example plugin for these tests first.

Run on their own (after ``pip install`` of the plugin), no such fixture exists
and the tests use the installed copy.
"""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _example_plugin_installed(request):
    try:
        request.getfixturevalue("example_plugin_site")
    except pytest.FixtureLookupError:
        return  # standalone run: the plugin is already installed
