"""Notebook dashboard of a replay session (bqplot + ipywidgets).

Each part is a small class with a ``widget`` to display and an ``update(frame)`` that
redraws it from a :class:`~mbo_lab.replay.session.Frame`; :class:`Dashboard` puts them
together and subscribes to a session::

    >>> import mbo_lab
    >>> s = mbo_lab.open()                     # doctest: +SKIP
    >>> from mbo_lab.viz import Dashboard
    >>> Dashboard(s)                           # doctest: +SKIP

Prices go to bqplot as float64 only; every update assigns new arrays inside the mark's
``hold_sync``; the session's kernel clock plays (never browser ticks). Time axes are plain
linear scales in seconds whose tick labels are written in Python in the chosen zone (UTC
or the exchange's), so the browser's time zone never changes them.
"""

from __future__ import annotations

from .controls import SPEEDS, Controls
from .dashboard import Dashboard, live_dashboard
from .depth import DepthChart
from .heatmap import Heatmap
from .inspector import Inspector
from .ladder import Ladder
from .price import PriceChart
from .stats import StatsPanel

__all__ = ["Dashboard", "live_dashboard", "Ladder", "DepthChart", "PriceChart", "Heatmap",
           "Controls", "Inspector", "StatsPanel", "SPEEDS"]
