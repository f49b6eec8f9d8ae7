"""``/generate``'s ``sampling_params.no_stop_trim`` must be a boolean (or null).

Found by the long fuzz profile: ``Infinity``, ``"no"`` or ``[1]`` were taken as
"true" (any truthy value) instead of being refused like every other bad field.
"""

from __future__ import annotations

import pytest
from server.harness import asgi_stack

pytestmark = pytest.mark.anyio
BODY = b'{"input_ids": [72, 105], "sampling_params": {"max_new_tokens": 2, "no_stop_trim": %s}}'


@pytest.mark.parametrize("value", ["Infinity", "NaN", '"no"', "1", "[1]", "{}"])
async def test_a_non_boolean_is_a_400_naming_the_field(value):
    async with asgi_stack() as stack:
        r = await stack.client.post(
            "/generate", content=BODY % value.encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        assert "no_stop_trim must be a boolean" in r.json()["error"]["message"]
        assert stack.engine.generate_reqs() == []


@pytest.mark.parametrize("value", ["true", "false", "null"])
async def test_booleans_and_null_are_served(value):
    async with asgi_stack() as stack:
        r = await stack.client.post(
            "/generate", content=BODY % value.encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
