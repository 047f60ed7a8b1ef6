"""imagegate: a self-hosted, authenticated image service."""

__version__ = "0.1.0"
