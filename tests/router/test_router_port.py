"""``pdcore router`` on a busy port: one line naming ``--port`` and ``--host``, exit 1
(as ``pdcore serve`` on a busy ``--port``), not uvicorn's log."""

from __future__ import annotations

import socket

from pdcore.launch_router import run


def test_busy_port_is_one_line_naming_the_flags(capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        rc = run(
            ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", "http://127.0.0.1:9"]
        )
    err = capsys.readouterr().err.strip()
    assert rc == 1, "a busy port must exit 1, like pdcore serve on a busy --port"
    assert len(err.splitlines()) == 1, f"expected one line, got: {err!r}"
    assert err.startswith("pdcore router: error: --port:"), err
    assert f"127.0.0.1:{port}" in err and "--host" in err, err
