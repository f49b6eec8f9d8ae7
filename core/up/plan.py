"""Which servers ``pdcore up`` starts and which GPUs each one gets.

SGLang places TP rank ``r`` of a server on GPU ``base_gpu_id + r * gpu_id_step``; a
server therefore spans ``(tp - 1) * step + 1`` GPUs from its base. Servers get
consecutive blocks in the order prefills, decodes, so no two share a GPU; a role's
first block can be moved with its own base. On the CPU no server gets one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerPlan:
    name: str
    role: str
    base_gpu_id: int | None  # None: the server's device has no GPUs to pick


def gpu_span(tp_size: int = 1, gpu_id_step: int = 1) -> int:
    """GPUs one server's block covers (its last rank's GPU, counted from its base)."""
    return (tp_size - 1) * gpu_id_step + 1


def plan_servers(
    num_prefill: int,
    num_decode: int,
    *,
    gpus: bool,
    tp_size: int = 1,
    gpu_id_step: int = 1,
    base_gpu_id: int = 0,
    prefill_base_gpu_id: int | None = None,
    decode_base_gpu_id: int | None = None,
) -> list[ServerPlan]:
    """Prefill servers first, then decode ones, each with its ``--base-gpu-id``."""
    span = gpu_span(tp_size, gpu_id_step)
    first_prefill = base_gpu_id if prefill_base_gpu_id is None else prefill_base_gpu_id
    first_decode = (
        first_prefill + num_prefill * span if decode_base_gpu_id is None else decode_base_gpu_id
    )

    def gpu(first: int, i: int) -> int | None:
        return first + i * span if gpus else None

    plan = [
        ServerPlan(f"prefill-{i}", "prefill", gpu(first_prefill, i)) for i in range(num_prefill)
    ]
    plan += [ServerPlan(f"decode-{i}", "decode", gpu(first_decode, i)) for i in range(num_decode)]
    return plan


def flag_value(args: list[str], *names: str) -> str | None:
    """The last value given to any of ``names`` (``--flag V`` or ``--flag=V``), else None."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def device_has_gpus(device: str) -> bool:
    """Whether servers on ``--device`` run on accelerators that need a GPU each."""
    if device == "cpu":
        return False
    if device != "auto":
        return True
    from pdcore.registry import get_registry  # loads the platform plugins: only for auto

    return get_registry().select_platform("auto").device_type != "cpu"
