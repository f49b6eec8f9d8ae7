"""Fixtures for the HTTP front-end tests (fake engine + byte tokenizer)."""

from __future__ import annotations

import pytest
from server.harness import asgi_stack


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def stack():
    async with asgi_stack() as s:
        yield s
