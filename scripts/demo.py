"""`make demo`: the README's main command, a one-question run of a local PD cluster.

Runs ``pdcore up --once``: 1 prefill + 1 decode server (CPU, the embedded
SmolLM2, Mooncake over TCP, no download) behind the PD router, one chat request
through the router, the model's answer, then everything stopped. Extra
arguments go to ``pdcore up`` (e.g. ``--transfer-backend nixl``). Ends with the
commands for a cluster that keeps running, since ``pdcore`` is on PATH only
inside the activated virtualenv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

QUESTION = "What is the capital of France? Answer in one sentence."
ROUTER_URL = "http://127.0.0.1:30000"  # `pdcore up`'s default router address


def running_venv() -> Path | None:
    """The virtualenv of this interpreter, or None outside one."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def activate_command(venv: Path) -> str:
    """``source <venv>/bin/activate``, relative to the current folder when inside it."""
    venv = venv.resolve()
    try:
        shown = venv.relative_to(Path.cwd())
    except ValueError:
        shown = venv
    return f"source {shown / 'bin' / 'activate'}"


def next_steps(venv: Path | str | None = None) -> str:
    """What to run after the demo (or the setup): activate ``venv`` (default: this
    interpreter's), unless it is active already, then ``pdcore up`` and a curl."""
    venv = Path(venv) if venv else running_venv()
    body = json.dumps(
        {"model": "default", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64}
    )
    steps = []  # (command, comment)
    active = os.environ.get("VIRTUAL_ENV")
    if venv is not None and not (active and Path(active).resolve() == venv.resolve()):
        steps.append((activate_command(venv), "puts pdcore on PATH"))
    steps += [
        ("pdcore up", f"router on {ROUTER_URL} with 1 prefill + 1 decode; Ctrl-C stops"),
        ("pdcore up --help", "more servers, another model, --transfer-backend nixl, ..."),
    ]
    width = 25  # comments line up unless a command (a long venv path) is wider
    lines = ["", "Next: a cluster that keeps running, and a request to it over HTTP:"]
    lines += [f"  {cmd.ljust(width)}  # {comment}" for cmd, comment in steps]
    lines += [
        "then, from another terminal (OpenAI-compatible API):",
        f"  curl {ROUTER_URL}/v1/chat/completions -H 'Content-Type: application/json' \\",
        f"       -d '{body}'",
    ]
    return "\n".join(lines)


def main() -> int:
    cmd = [sys.executable, "-m", "pdcore", "up", "--once", QUESTION, *sys.argv[1:]]
    print("$ pdcore up --once", repr(QUESTION), *sys.argv[1:], flush=True)
    try:
        code = subprocess.run(cmd).returncode
    except KeyboardInterrupt:  # pdcore up got the Ctrl-C too and stops the cluster itself
        return 130
    if code == 0:
        print(next_steps(), flush=True)
    else:
        print(f"\nthe demo failed (exit code {code}); the lines above say why", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
