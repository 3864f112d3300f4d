"""Top-of-book measures at every F_LAST state: spread, mid, size-weighted mid, imbalance.

All return pandas objects indexed by ``ts_recv`` (``datetime64[ns, UTC]``), one row per
F_LAST record (for the record's own book; select one book with ``instrument_id`` /
``publisher_id``). Values are NaN while the book is crossed or a side is empty; a locked
book (bid == ask) has spread 0 and a defined mid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..book.build import Source
from ..book.frames import BookFrames
from ..io.records import px_to_float
from ._base import _index, _states, _valid_top

__all__ = ["quotes", "spread", "mid", "weighted_mid", "imbalance"]


def _l1(fr: BookFrames) -> tuple[np.ndarray, ...]:
    ok = _valid_top(fr)
    bid = np.where(ok, px_to_float(fr.bid_px[:, 0]), np.nan)
    ask = np.where(ok, px_to_float(fr.ask_px[:, 0]), np.nan)
    bsz = fr.bid_sz[:, 0].astype(np.float64)
    asz = fr.ask_sz[:, 0].astype(np.float64)
    return ok, bid, ask, bsz, asz


def _wmid(bid, ask, bsz, asz) -> np.ndarray:
    tot = bsz + asz
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (bid * asz + ask * bsz) / tot, np.nan)


def quotes(source: Source, *, instrument_id: int | None = None,
           publisher_id: int | None = None, frames: BookFrames | None = None,
           engine: str | None = None) -> pd.DataFrame:
    """Best bid/ask with spread, mid, weighted mid and level-1 imbalance, per F_LAST state.

    Columns: ``instrument_id``, ``publisher_id``, ``bid_px``, ``ask_px`` (currency units;
    NaN when crossed or a side empty), ``bid_sz``, ``ask_sz`` (lots), ``spread``, ``mid``,
    ``weighted_mid`` (currency units), ``imbalance`` (-1..1), ``crossed``.

    >>> quotes(mbo_lab.demo_path(), instrument_id=1001).head()   # doctest: +SKIP
    """
    _, fr, rec = _states(source, 1, frames, engine, instrument_id, publisher_id)
    ok, bid, ask, bsz, asz = _l1(fr)
    tot = bsz + asz
    with np.errstate(invalid="ignore", divide="ignore"):
        imb = np.where(ok & (tot > 0), (bsz - asz) / tot, np.nan)
    return pd.DataFrame({
        "instrument_id": rec["instrument_id"],
        "publisher_id": rec["publisher_id"],
        "bid_px": bid, "ask_px": ask,
        "bid_sz": fr.bid_sz[:, 0], "ask_sz": fr.ask_sz[:, 0],
        "spread": ask - bid,
        "mid": (bid + ask) / 2.0,
        "weighted_mid": _wmid(bid, ask, bsz, asz),
        "imbalance": imb,
        "crossed": fr.cross == 2,
    }, index=_index(rec))


def spread(source: Source, *, instrument_id: int | None = None,
           publisher_id: int | None = None, frames: BookFrames | None = None,
           engine: str | None = None) -> pd.Series:
    """Best ask minus best bid (currency units) at every F_LAST state; NaN when crossed or a
    side is empty, 0 when locked.

    >>> spread(mbo_lab.demo_path(), instrument_id=1001).describe()   # doctest: +SKIP
    """
    _, fr, rec = _states(source, 1, frames, engine, instrument_id, publisher_id)
    _, bid, ask, _, _ = _l1(fr)
    return pd.Series(ask - bid, index=_index(rec), name="spread")


def mid(source: Source, *, instrument_id: int | None = None,
        publisher_id: int | None = None, frames: BookFrames | None = None,
        engine: str | None = None) -> pd.Series:
    """(best bid + best ask) / 2 (currency units) at every F_LAST state; NaN when crossed or
    a side is empty.

    >>> mid(mbo_lab.demo_path(), instrument_id=1001).iloc[-1]   # doctest: +SKIP
    """
    _, fr, rec = _states(source, 1, frames, engine, instrument_id, publisher_id)
    _, bid, ask, _, _ = _l1(fr)
    return pd.Series((bid + ask) / 2.0, index=_index(rec), name="mid")


def weighted_mid(source: Source, *, instrument_id: int | None = None,
                 publisher_id: int | None = None, frames: BookFrames | None = None,
                 engine: str | None = None) -> pd.Series:
    """Size-weighted mid ``(P_b*Q_a + P_a*Q_b) / (Q_a + Q_b)`` at level 1 (currency units).

    Often called "microprice" (Databento's microprice example); it is *not* Stoikov's
    micro-price (see :func:`mbo_lab.analytics.microprice_stoikov`). NaN when crossed or a
    side is empty.

    >>> weighted_mid(mbo_lab.demo_path(), instrument_id=1001).head()   # doctest: +SKIP
    """
    _, fr, rec = _states(source, 1, frames, engine, instrument_id, publisher_id)
    _, bid, ask, bsz, asz = _l1(fr)
    return pd.Series(_wmid(bid, ask, bsz, asz), index=_index(rec), name="weighted_mid")


def imbalance(source: Source, levels: int = 1, *, instrument_id: int | None = None,
              publisher_id: int | None = None, frames: BookFrames | None = None,
              engine: str | None = None) -> pd.Series:
    """Top-``levels`` book imbalance ``(sum Q_b - sum Q_a) / (sum Q_b + sum Q_a)`` in [-1, 1]
    (dimensionless; sizes in lots over the first ``levels`` levels of each side).

    NaN when crossed or a side is empty. ``frames`` must hold at least ``levels`` levels.

    >>> imbalance(mbo_lab.demo_path(), levels=5, instrument_id=1001).mean()   # doctest: +SKIP
    """
    _, fr, rec = _states(source, levels, frames, engine, instrument_id, publisher_id)
    qb = fr.bid_sz[:, :levels].sum(axis=1).astype(np.float64)
    qa = fr.ask_sz[:, :levels].sum(axis=1).astype(np.float64)
    ok = _valid_top(fr) & (qb + qa > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(ok, (qb - qa) / (qb + qa), np.nan)
    return pd.Series(val, index=_index(rec), name=f"imbalance_{levels}")


