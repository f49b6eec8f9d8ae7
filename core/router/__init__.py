"""The PD router: pairs a prefill and a decode worker per request over HTTP only.

It imports nothing from the engine or the server (ARCHITECTURE.md §1); workers
are plain URLs it health-checks, balances and fails over between.
"""
