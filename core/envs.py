"""Environment knobs, read under both SGLang's and pdcore's names.

Users copy ``export SGLANG_DISAGGREGATION_*`` lines from SGLang's PD docs; pdcore
accepts them unchanged, and ``PDCORE_*`` spellings win when both are set. A bad
value is an error naming the variable, never a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pdcore.errors import ConfigError


def _default_thread_pool_size() -> int:
    # SGLang: int(0.75 * cpu_count) // 8, clamped to [4, 12].
    return min(max(4, int(0.75 * (os.cpu_count() or 1)) // 8), 12)


@dataclass(frozen=True)
class EnvKnob:
    suffix: str  # name after the SGLANG_/PDCORE_ prefix
    parse: Callable[[str], Any]
    default: Any  # value, or a zero-argument callable computing it
    minimum: float
    help: str

    def names(self) -> tuple[str, str]:
        return f"PDCORE_{self.suffix}", f"SGLANG_{self.suffix}"

    def read(self, env: Mapping[str, str]) -> Any:
        for var in self.names():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                value = self.parse(raw.strip())
            except ValueError:
                kind = "an integer" if self.parse is int else "a number"
                raise ConfigError(var, f"expected {kind}, got {raw!r}") from None
            if value < self.minimum:
                raise ConfigError(var, f"must be >= {self.minimum}, got {raw!r}")
            return value
        return self.default() if callable(self.default) else self.default


DISAGGREGATION_KNOBS: dict[str, EnvKnob] = {
    k.suffix.removeprefix("DISAGGREGATION_").lower(): k
    for k in (
        EnvKnob(
            "DISAGGREGATION_THREAD_POOL_SIZE",
            int,
            _default_thread_pool_size,
            1,
            "KV transfer worker threads per TP rank (prefill)",
        ),
        EnvKnob("DISAGGREGATION_QUEUE_SIZE", int, 4, 1, "parallel transfer queues (prefill)"),
        EnvKnob(
            "DISAGGREGATION_BOOTSTRAP_TIMEOUT",
            float,
            300.0,
            0,
            "seconds prefill waits for decode's KV indices",
        ),
        EnvKnob(
            "DISAGGREGATION_HEARTBEAT_INTERVAL",
            float,
            5.0,
            0.1,
            "seconds between decode's health checks of prefill",
        ),
        EnvKnob(
            "DISAGGREGATION_HEARTBEAT_MAX_FAILURE",
            int,
            2,
            1,
            "failed heartbeats before decode marks prefill offline",
        ),
        EnvKnob(
            "DISAGGREGATION_WAITING_TIMEOUT",
            float,
            300.0,
            0,
            "seconds decode waits for the KV cache after bootstrap",
        ),
        EnvKnob(
            "DISAGGREGATION_WRITE_TIMEOUT",
            float,
            30.0,
            0.001,
            "seconds a KV write may take before the transfer engine reports it failed "
            "(TransferConfig.options['transfer_timeout_s'])",
        ),
        EnvKnob(
            "DISAGGREGATION_QUARANTINE_TIMEOUT",
            float,
            300.0,
            0,
            "seconds decode keeps a failed room's pages while prefill may still write them",
        ),
    )
}


@dataclass(frozen=True)
class DisaggregationEnv:
    thread_pool_size: int
    queue_size: int
    bootstrap_timeout: float
    heartbeat_interval: float
    heartbeat_max_failure: int
    waiting_timeout: float
    quarantine_timeout: float = 300.0
    write_timeout: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DisaggregationEnv:
        env = os.environ if env is None else env
        return cls(**{field: knob.read(env) for field, knob in DISAGGREGATION_KNOBS.items()})


LOCAL_PREFILL_THRESHOLD = EnvKnob(
    "DISAGGREGATION_LOCAL_PREFILL_THRESHOLD",
    int,
    0,
    0,
    "decode prefills prompts with at most this many uncached tokens itself (0: off)",
)


def local_prefill_threshold(env: Mapping[str, str] | None = None) -> int:
    """The decode server's ``--disaggregation-local-prefill-threshold`` when the flag is
    not given: ``PDCORE_DISAGGREGATION_LOCAL_PREFILL_THRESHOLD`` (or the ``SGLANG_``
    spelling), else 0 (off). A bad value is an error naming the variable."""
    return LOCAL_PREFILL_THRESHOLD.read(os.environ if env is None else env)


PROFILER_DIR_VARS = ("PDCORE_TORCH_PROFILER_DIR", "SGLANG_TORCH_PROFILER_DIR")
DEFAULT_PROFILER_DIR = "/tmp"


def profiler_dir(
    env: Mapping[str, str] | None = None, default: str | None = DEFAULT_PROFILER_DIR
) -> str | None:
    """Where ``/start_profile`` writes traces when the request names no ``output_dir``:
    ``PDCORE_TORCH_PROFILER_DIR``, else SGLang's ``SGLANG_TORCH_PROFILER_DIR``, else
    ``default`` (/tmp, SGLang's), so an ``export`` copied from SGLang's docs works."""
    env = os.environ if env is None else env
    for var in PROFILER_DIR_VARS:
        value = env.get(var, "").strip()
        if value:
            return value
    return default


SECRET_VARS = ("PDCORE_DISAGGREGATION_SECRET", "SGLANG_DISAGGREGATION_SECRET")


def disaggregation_secret(env: Mapping[str, str] | None = None) -> str | None:
    """The PD control-plane secret when ``--disaggregation-secret`` is not given:
    ``PDCORE_DISAGGREGATION_SECRET``, else ``SGLANG_DISAGGREGATION_SECRET``, else None
    (control messages unauthenticated). An environment variable keeps the secret
    out of ``ps`` output, which a flag cannot."""
    env = os.environ if env is None else env
    for var in SECRET_VARS:
        value = env.get(var, "")
        if value.strip():
            return value
    return None
