"""Hook implementations: cheap registration only; engines are built by factories."""

from __future__ import annotations

from pdcore.attention.base import AttentionBackend, KVLayout
from pdcore.disaggregation.transfer import TransferBackend
from pdcore.errors import ConfigError
from pdcore.hookspecs import Availability, hookimpl
from pdcore.platform import MemoryKind


def _tcp_engine(config):
    from pdcore_example.tcp_engine import TcpTransferEngine

    return TcpTransferEngine(config)


def _matmul_attention(config):
    from pdcore_example.attention import MatmulAttention

    return MatmulAttention(config)


@hookimpl
def pdcore_transfer_backends():
    return [
        TransferBackend(
            name="example-tcp",
            factory=_tcp_engine,
            memory_kinds=(MemoryKind.DRAM,),
            check=lambda: Availability.yes("pure Python sockets"),
            description="Example plain-TCP engine (DRAM only)",
        )
    ]


@hookimpl
def pdcore_attention_backends():
    return [
        AttentionBackend(
            name="example-matmul",
            factory=_matmul_attention,
            platforms=("cpu",),
            kv_layout=KVLayout(kind="mha"),
            description="Example paged attention with explicit matmul/softmax",
        )
    ]


@hookimpl
def pdcore_add_cli_args(parser):
    parser.add_argument(
        "--example-tcp-timeout",
        type=float,
        default=10.0,
        help="seconds before an example-tcp transfer is declared failed",
    )


@hookimpl
def pdcore_configure(args):
    """Runs in the server's front end; what it returns is what the engine's
    ``TransferConfig.options`` holds in every engine process."""
    timeout = getattr(args, "example_tcp_timeout", 10.0)
    if not timeout > 0:
        raise ConfigError("--example-tcp-timeout", f"must be positive, got {timeout}")
    return {"example_tcp_timeout": float(timeout)}
