"""pytest plugin registered through ``pytest11``: fixtures and markers for the kit."""
