"""Starting pdcore processes: ``pdcore up`` (a local prefill/decode cluster plus router,
started and stopped as one) and the launcher library under it that tests and
benchmarks use too: ``pdcore.up.launch`` (processes), ``pdcore.up.ports`` (ports)."""


def run(argv: list[str], prog: str = "pdcore up") -> int:
    """``pdcore up``'s entry point (imported on use: ``pdcore.up.ports`` stays light)."""
    from pdcore.up.cluster import run as run_up

    return run_up(argv, prog)


__all__ = ["run"]
