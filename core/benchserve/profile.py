"""``--profile``: trace every prefill and decode worker on its own during the measured run.

The torch profiler cannot trace prefill and decode together, so each worker
profiles its own engine (``/start_profile``, ``/stop_profile``) and names its
trace files by its role. Behind a router (it answers ``/list_workers``) each
worker is called directly, with its own request; a lone server is its only worker.
The report lists the files per role: ``{"prefill": [...], "decode": [...]}``
(``"null"`` for a server that does both). The paths are on the workers' machines.
"""

from __future__ import annotations

import asyncio

import aiohttp

from pdcore.benchserve.client import ServerError, _error_text

LIST_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Stopping writes the whole trace before the worker answers.
PROFILE_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=10)
ROLE_NAMES = {"regular": "null"}  # the router's name for a server that does both


async def workers(session: aiohttp.ClientSession, base_url: str) -> dict[str, str]:
    """``{url: role}`` of the workers behind ``base_url``; ``{base_url: ""}`` for a server."""
    try:
        async with session.get(base_url + "/list_workers", timeout=LIST_TIMEOUT) as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        body = None
    if not isinstance(body, dict):
        return {base_url: ""}
    listed = body.get("workers") or [{"url": u} for u in body.get("urls") or []]
    found = {}
    for w in listed:
        role = w.get("role") or ""
        found[w["url"].rstrip("/")] = ROLE_NAMES.get(role, role)
    if not found:
        raise ServerError(f"--profile: the router at {base_url} lists no workers")
    return found


async def start(session: aiohttp.ClientSession, targets: dict[str, str], output_dir) -> None:
    """``/start_profile`` on every worker; if one refuses, stop the others and raise."""
    body = {"output_dir": output_dir} if output_dir else {}
    answers = await asyncio.gather(*(_post(session, u, "/start_profile", body) for u in targets))
    failed = [(url, a) for url, a in zip(targets, answers, strict=True) if a[0] != 200]
    if failed:
        started = {u: r for u, r in targets.items() if u not in dict(failed)}
        await stop(session, started)
        url, (status, text) = failed[0]
        raise ServerError(f"--profile: {url}/start_profile answered {status}: {text}")


async def stop(session: aiohttp.ClientSession, targets: dict[str, str]) -> dict:
    """``/stop_profile`` on every worker: the trace files by role (plus ``errors``)."""
    answers = await asyncio.gather(*(_post(session, u, "/stop_profile", {}) for u in targets))
    files: dict[str, list[str]] = {}
    errors = []
    for (url, role), (status, reply) in zip(targets.items(), answers, strict=True):
        if status != 200:
            errors.append(f"{url}/stop_profile answered {status}: {reply}")
            continue
        reply = reply if isinstance(reply, dict) else {}  # SGLang answers in plain text
        role = reply.get("role") or role or "null"
        files.setdefault(role, []).extend(reply.get("files") or [])
    return {**files, "errors": errors} if errors else files


async def _post(session, url: str, path: str, body: dict) -> tuple[int, dict | str]:
    """``(status, JSON reply or error text)``; 0 when the worker cannot be reached."""
    try:
        async with session.post(url + path, json=body, timeout=PROFILE_TIMEOUT) as resp:
            text = await resp.text()
            if resp.status != 200:
                return resp.status, _error_text(text)
            try:
                return 200, await resp.json(content_type=None)
            except ValueError:
                return 200, text
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        return 0, f"{type(e).__name__}: {e}"
