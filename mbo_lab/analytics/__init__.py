"""Market-microstructure measures from MBO data, as pandas objects.

=============================  =========================================================
book states (every F_LAST)     :func:`quotes`, :func:`spread`, :func:`mid`,
                               :func:`weighted_mid` (size-weighted), :func:`imbalance`
                               (top N), :func:`microprice_stoikov` / :func:`fit_microprice`
order flow                     :func:`ofi` (Cont-Kukanov-Stoikov, multi-level Xu et al.),
                               :func:`ofi_events`
trades                         :func:`trade_tape` (aggressor side), :func:`vwap`,
                               :func:`cumulative_volume_delta`, :func:`volume_profile`
orders                         :func:`order_lifetimes`, :func:`cancel_to_trade`,
                               :func:`queue_history`
=============================  =========================================================

Every function takes a ``source`` (DBN path, :class:`~mbo_lab.io.dbn.MboData` or MBO
records). Prices are currency units (floats), sizes lots, times ``datetime64[ns, UTC]``
(``ts_recv`` unless stated). Book measures are NaN while the book is crossed or a side is
empty; records flagged F_SNAPSHOT never count as flow. To share one engine pass::

    >>> data, frames = book_frames(mbo_lab.demo_path(), levels=5)          # doctest: +SKIP
    >>> imbalance(data, levels=5, frames=frames)                            # doctest: +SKIP
    >>> ofi(data, "1s", levels=5, frames=frames)                            # doctest: +SKIP
"""

from __future__ import annotations

from ._base import AnalyticsError, book_frames
from .microprice import MicropriceModel, fit_microprice, microprice_stoikov
from .ofi import ofi, ofi_events
from .orders import END_REASONS, cancel_to_trade, order_lifetimes, queue_history
from .quotes import imbalance, mid, quotes, spread, weighted_mid
from .trades import cumulative_volume_delta, trade_tape, volume_profile, vwap

__all__ = [
    "AnalyticsError", "book_frames",
    "quotes", "spread", "mid", "weighted_mid", "imbalance",
    "MicropriceModel", "fit_microprice", "microprice_stoikov",
    "ofi", "ofi_events",
    "trade_tape", "vwap", "cumulative_volume_delta", "volume_profile",
    "order_lifetimes", "cancel_to_trade", "queue_history", "END_REASONS",
]
