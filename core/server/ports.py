"""Ports the server's engine processes bind, checked before the model loads.

The HTTP port is taken by the front end itself (``launch._bind_http``). The
prefill bootstrap server, the TP rendezvous (``--dist-init-addr``) and, with DP
attention over several nodes, the front end's engine sockets (the ports after
it) are bound once the model has loaded: a busy one would otherwise be found
only then, as a traceback. These checks find it in a second and name the
flag. (The engine binds the port a moment later, so a port taken in between is
still reported by the engine.)
"""

from __future__ import annotations

from pdcore.config import ServerArgs
from pdcore.errors import ConfigError
from pdcore.listen import port_busy


def engine_ports(args: ServerArgs) -> list[tuple[str, str, int]]:
    """``(flag, host, port)`` of each port this node's engine processes will listen on."""
    ports = []
    if args.disaggregation_mode == "prefill" and args.node_rank == 0:
        ports.append(
            ("--disaggregation-bootstrap-port", args.host, args.disaggregation_bootstrap_port)
        )
    if args.tp_size > 1 and args.node_rank == 0 and args.dist_init_addr:
        host, port = args.dist_init_addr.rsplit(":", 1)
        # torch's TCP store of the TP ranks listens on every interface
        ports.append(("--dist-init-addr", "0.0.0.0", int(port)))
        if args.dp_attention_groups > 1 and args.nnodes > 1:
            # the front end's engine sockets, PORT+1 .. PORT+groups+1 (launch.engine_addrs)
            for offset in range(1, args.dp_attention_groups + 2):
                ports.append(("--dist-init-addr", host.strip("[]"), int(port) + offset))
    return ports


def check_engine_ports(args: ServerArgs) -> None:
    """Raise a ``ConfigError`` naming the flag of the first busy port."""
    for flag, host, port in engine_ports(args):
        busy = port_busy(host, port)
        if busy:
            raise ConfigError(flag, f"cannot listen on {host}:{port}: {busy}")
