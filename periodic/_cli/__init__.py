"""The ``periodic`` command (``python -m periodic``): look at and steer the jobs of a store,
or serve an application's jobs. See the "The periodic command" docs page."""

from .main import main as main

__all__ = ["main"]
