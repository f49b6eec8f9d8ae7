"""Starting pdcore processes: ``pdcore up`` (a local prefill/decode cluster plus router,
started and stopped as one) and the launcher library under it (``pdcore.up.launch``,
``pdcore.up.ports``) that tests and benchmarks use too."""

from pdcore.up.cluster import run

__all__ = ["run"]
