"""Package version (single source for setup.cfg and results)."""

__version__ = "0.2.2"
