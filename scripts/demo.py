"""`make demo`: the README's main command, a one-question run of a local PD cluster.

Runs ``pdcore up --once``: 1 prefill + 1 decode server (CPU, the embedded
SmolLM2, Mooncake over TCP, no download) behind the PD router, one chat request
through the router, the model's answer, then everything stopped. Extra
arguments go to ``pdcore up`` (e.g. ``--transfer-backend nixl``).
"""

from __future__ import annotations

import subprocess
import sys

QUESTION = "What is the capital of France? Answer in one sentence."


def main() -> int:
    cmd = [sys.executable, "-m", "pdcore", "up", "--once", QUESTION, *sys.argv[1:]]
    print("$ pdcore up --once", repr(QUESTION), *sys.argv[1:], flush=True)
    try:
        return subprocess.run(cmd).returncode
    except KeyboardInterrupt:  # pdcore up got the Ctrl-C too and stops the cluster itself
        return 130


if __name__ == "__main__":
    sys.exit(main())
