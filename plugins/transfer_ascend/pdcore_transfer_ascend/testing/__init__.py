"""CPU stand-ins for memfabric's mf_adapter; nothing here is imported by the plugin itself.

``loopback_mf``: the binding's API over TCP between processes on one host, moving
real bytes, for end-to-end PD tests on machines without NPUs.
"""
