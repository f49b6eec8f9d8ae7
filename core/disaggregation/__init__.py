"""PD disaggregation: protocol, bootstrap and the transfer-engine seam.

Imports nothing from the engine; plugins use only ``pdcore.disaggregation.transfer``.
"""
