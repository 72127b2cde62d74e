"""The exceptions ``periodic`` raises on purpose.

Bad options raise the built-in :class:`TypeError` or :class:`ValueError`; misuse of a
scheduler (serving it twice at once) raises :class:`RuntimeError`. Everything else is a
:class:`PeriodicError`.
"""

from __future__ import annotations

__all__ = ["PeriodicError"]


class PeriodicError(Exception):
    """Base class of the errors specific to ``periodic``."""
