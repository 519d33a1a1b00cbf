"""session-gateway: a reverse proxy that owns the chatbot conversation session."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
