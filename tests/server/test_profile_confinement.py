"""``/start_profile`` writes only under the profile directory, and only on POST.

Spec: the profile directory is ``$PDCORE_TORCH_PROFILER_DIR``, else
``$SGLANG_TORCH_PROFILER_DIR``, else /tmp. A client's ``output_dir`` (relative to
it, or absolute) must resolve -- after ``..`` and symlinks -- inside it, else a
400 that says so, before the engine hears of it. GET on ``/start_profile`` or
``/stop_profile`` is a 405 that says ``Allow: POST``.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from server.harness import Stack

from pdcore.server.errors import RequestError


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "profiles"
    root.mkdir()
    monkeypatch.setenv("PDCORE_TORCH_PROFILER_DIR", str(root))
    monkeypatch.delenv("SGLANG_TORCH_PROFILER_DIR", raising=False)
    return root


def call(method: str, path: str, body=None) -> httpx.Response:
    """One request to a server app whose engine is never started (nothing may reach it)."""
    stack = Stack()

    async def go():
        transport = httpx.ASGITransport(app=stack.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, json=body)

    try:
        return asyncio.run(go())
    finally:
        stack.close()


@pytest.mark.parametrize("path", ["/start_profile", "/stop_profile"])
def test_get_is_405_naming_post(path):
    r = call("GET", path)
    assert r.status_code == 405, f"GET {path} must not change the server's state: {r.text}"
    assert r.headers["allow"] == "POST", r.headers


def test_output_dir_outside_the_profile_directory_is_400(root, tmp_path):
    outside = tmp_path / "elsewhere"
    r = call("POST", "/start_profile", {"output_dir": str(outside)})
    assert r.status_code == 400, f"an output_dir outside {root} was accepted: {r.text}"
    message = r.json()["error"]["message"]
    assert "outside the profile directory" in message and str(root) in message, message
    assert not outside.exists(), "the refused directory was created"


def test_dot_dot_cannot_climb_out(root):
    r = call("POST", "/start_profile", {"output_dir": "traces/../../escaped"})
    assert r.status_code == 400, r.text
    assert not (root.parent / "escaped").exists()


def test_a_symlink_inside_cannot_lead_out(root, tmp_path):
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", root / "link")
    r = call("POST", "/start_profile", {"output_dir": str(root / "link" / "traces")})
    assert r.status_code == 400, f"a symlink out of {root} was followed: {r.text}"


def test_paths_inside_resolve_under_the_profile_directory(root):
    from pdcore.server.profile_api import confined  # here: the HTTP tests need no helper

    real = os.path.realpath(root)
    assert confined(None, str(root)) == real, "no output_dir: the profile directory itself"
    assert confined("run1", str(root)) == os.path.join(real, "run1"), "relative to the root"
    assert confined(str(root / "a" / ".." / "b"), str(root)) == os.path.join(real, "b")
    with pytest.raises(RequestError):
        confined(str(root) + "-sibling", str(root))  # a shared prefix is not inside
