"""``pdcore up``: a local prefill/decode cluster plus router, started and stopped as one."""

from pdcore.up.cluster import run

__all__ = ["run"]
