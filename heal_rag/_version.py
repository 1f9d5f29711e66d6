"""Version of heal_rag."""

from __future__ import annotations

__version__ = "0.1.0"
