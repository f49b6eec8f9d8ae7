"""`make demo`: serve the embedded SmolLM2 on this machine and ask it one question.

Starts ``python -m pdcore.launch_server`` (CPU, no model download), waits for it
with a progress line, sends one OpenAI chat request, prints the answer and the
server's KV accounting, then stops the server. The PD cluster version of this
(prefill + decode + router) is ``pdcore up`` once the router lands.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "pdcore.launch_server",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    print("$", " ".join(cmd[1:]))
    server = subprocess.Popen(cmd)
    try:
        start = time.monotonic()
        while True:
            if server.poll() is not None:
                print(f"server exited with {server.returncode}", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            print(
                f"\rloading SmolLM2-135M-Instruct ... {time.monotonic() - start:4.0f}s",
                end="",
                flush=True,
            )
            time.sleep(0.5)
        print(f"\rserver ready at {url} after {time.monotonic() - start:.0f}s")
        question = "What is the capital of France? Answer in one sentence."
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 48,
            "temperature": 0,
        }
        print(
            f"$ curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d '{json.dumps(body)}'"
        )
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
        print("Q:", question)
        print("A:", reply["choices"][0]["message"]["content"].strip())
        print("usage:", reply["usage"])
        print("kv:", httpx.get(f"{url}/get_server_info", timeout=10).json()["kv_cache"])
        return 0
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    sys.exit(main())
