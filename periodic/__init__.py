"""Supervised periodic jobs for Trio."""

from . import _telemetry as _telemetry  # subscribes the OpenTelemetry handler
from . import events as events
from . import exceptions as exceptions
from ._events import subscribe as subscribe
from ._logging import configure_logging as configure_logging
from ._options import CatchUp as CatchUp
from ._options import DelayMode as DelayMode
from ._options import Mode as Mode
from ._options import Overlap as Overlap
from ._retry import Retry as Retry
from ._runinfo import RunInfo as RunInfo
from ._runinfo import current_run as current_run
from ._runs import Statistics as Statistics
from ._scheduler import Periodic as Periodic
from ._version import __version__ as __version__

__all__ = [
    "CatchUp",
    "DelayMode",
    "Mode",
    "Overlap",
    "Periodic",
    "Retry",
    "RunInfo",
    "Statistics",
    "__version__",
    "configure_logging",
    "current_run",
    "events",
    "exceptions",
    "subscribe",
]
