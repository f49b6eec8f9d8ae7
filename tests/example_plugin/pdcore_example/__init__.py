"""Example third-party pdcore plugin (see README.md)."""
