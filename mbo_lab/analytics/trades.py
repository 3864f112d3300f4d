"""The trade tape with aggressor side, VWAP, cumulative volume delta and volume profile.

Built from Trade (``T``) records: ``side`` is the **aggressor** (``B`` a buyer lifted the
offer, ``A`` a seller hit the bid, ``N`` none, e.g. CME implied trades), ``size`` the
quantity traded at ``price``. Fill (``F``) records are not trades of their own (they are
the resting side of the same match) and are not counted. Trade records flagged F_SNAPSHOT
(none in Databento data) are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..book.build import Source, as_data
from ..io.records import (
    ACTION_TRADE,
    F_SNAPSHOT,
    SIDE_ASK,
    SIDE_BID,
    byte_chars,
    ns_to_datetime,
    px_to_float,
)
from ._base import _book_mask, _buckets

__all__ = ["trade_tape", "vwap", "cumulative_volume_delta", "volume_profile"]


def _trade_rows(source: Source, instrument_id, publisher_id, start, end):
    data = as_data(source)
    r = data.records
    lo, hi = 0, len(r)
    if start is not None or end is not None:
        d = data.between(start, end)
        lo = d.first_index - data.first_index
        hi = lo + len(d)
    sub = r[lo:hi]
    mask = (sub["action"].view(np.uint8) == ACTION_TRADE) & ((sub["flags"] & F_SNAPSHOT) == 0)
    bm = _book_mask(sub, instrument_id, publisher_id)
    if bm is not None:
        mask &= bm
    idx = lo + np.flatnonzero(mask)
    return data, idx


def _symbol_column(iids: np.ndarray, symbols: dict[int, str]) -> pd.array:
    if not len(iids):
        return pd.array([], dtype="str")
    uniq, inv = np.unique(iids, return_inverse=True)
    names = np.array([symbols.get(int(u), "") for u in uniq], dtype=object)
    return pd.array(names[inv], dtype="str")


def trade_tape(source: Source, *, instrument_id: int | None = None,
               publisher_id: int | None = None, start=None, end=None) -> pd.DataFrame:
    """Every trade: price (currency units), size (lots) and aggressor side.

    Columns: ``ts_event``, ``instrument_id``, ``publisher_id``, ``symbol``, ``price``,
    ``size``, ``side`` (``B``/``A``/``N``), ``aggressor`` (``buy``/``sell``/``none``),
    ``signed_size`` (+size buy, -size sell, 0 none), ``order_id`` (aggressor's order id;
    0 when the venue does not say), ``sequence``, ``record_index``. Indexed by ``ts_recv``;
    ``start``/``end`` select ``start <= ts_recv < end``.

    >>> trade_tape(mbo_lab.demo_path(), instrument_id=1001).head()   # doctest: +SKIP
    """
    data, idx = _trade_rows(source, instrument_id, publisher_id, start, end)
    t = data.records[idx]
    side = t["side"].view(np.uint8)
    sign = np.where(side == SIDE_BID, 1, np.where(side == SIDE_ASK, -1, 0)).astype(np.int64)
    syms = data.symbols
    return pd.DataFrame({
        "ts_event": ns_to_datetime(t["ts_event"]),
        "instrument_id": t["instrument_id"],
        "publisher_id": t["publisher_id"],
        "symbol": _symbol_column(t["instrument_id"], syms),
        "price": px_to_float(t["price"]),
        "size": t["size"],
        "side": byte_chars(t["side"]),
        "aggressor": np.array(["none", "buy", "sell"])[np.where(sign == 1, 1,
                                                                 np.where(sign == -1, 2, 0))],
        "signed_size": sign * t["size"].astype(np.int64),
        "order_id": t["order_id"],
        "sequence": t["sequence"],
        "record_index": data.first_index + idx,
    }, index=ns_to_datetime(t["ts_recv"]).rename("ts_recv"))


def _volumes(tape: pd.DataFrame) -> pd.DataFrame:
    size = tape["size"].astype(np.int64)
    return tape.assign(
        _notional=tape["price"] * size,
        _vol=size,
        _buy=np.where(tape["signed_size"] > 0, size, 0),
        _sell=np.where(tape["signed_size"] < 0, size, 0),
        _none=np.where(tape["signed_size"] == 0, size, 0),
    )


def vwap(source: Source, freq: str | None = None, *, instrument_id: int | None = None,
         publisher_id: int | None = None, start=None, end=None) -> pd.DataFrame:
    """Volume-weighted average trade price ``sum(p*q) / sum(q)`` per book, over the window
    ``[start, end)`` (``freq=None``) or per time bucket (``freq="1min"``...).

    Columns: ``instrument_id``, ``publisher_id``, ``vwap`` (currency units), ``volume``,
    ``buy_volume``, ``sell_volume`` (lots, by aggressor), ``trades`` (count). With ``freq``
    the index is the bucket start (``ts``, UTC) and only buckets with trades appear.

    >>> vwap(mbo_lab.demo_path(), "1min", instrument_id=1001).head()   # doctest: +SKIP
    """
    tape = _volumes(trade_tape(source, instrument_id=instrument_id,
                               publisher_id=publisher_id, start=start, end=end))
    keys = ["instrument_id", "publisher_id"]
    if freq is not None:
        tape["_b"] = _buckets(tape.index.asi8.view(np.uint64), freq).astype(np.int64)
        keys.append("_b")
    g = tape.groupby(keys, sort=True)
    out = pd.DataFrame({
        "vwap": g["_notional"].sum() / g["_vol"].sum(),
        "volume": g["_vol"].sum(),
        "buy_volume": g["_buy"].sum(),
        "sell_volume": g["_sell"].sum(),
        "trades": g.size(),
    }).reset_index()
    if freq is not None:
        out.index = ns_to_datetime(out.pop("_b").to_numpy().astype(np.uint64)).rename("ts")
    return out


def cumulative_volume_delta(source: Source, freq: str | None = None, *,
                            instrument_id: int | None = None, publisher_id: int | None = None,
                            start=None, end=None) -> pd.DataFrame:
    """Cumulative volume delta: running sum of buy-aggressor minus sell-aggressor volume
    (lots) per book, from ``start`` on.

    ``freq=None``: one row per trade (``ts_recv`` index) with ``signed_size`` and ``cvd``.
    With ``freq``: one row per bucket with trades (``ts`` index, bucket start) with
    ``buy_volume``, ``sell_volume``, ``delta`` and ``cvd`` at the bucket's end. Trades with
    side ``N`` count 0.

    >>> cumulative_volume_delta(mbo_lab.demo_path(), instrument_id=1001)["cvd"].plot()  # doctest: +SKIP
    """
    tape = trade_tape(source, instrument_id=instrument_id, publisher_id=publisher_id,
                      start=start, end=end)
    keys = ["instrument_id", "publisher_id"]
    if freq is None:
        out = tape[keys + ["price", "size", "side", "signed_size"]].copy()
        out["cvd"] = tape.groupby(keys, sort=False)["signed_size"].cumsum()
        return out
    v = _volumes(tape)
    v["_b"] = _buckets(v.index.asi8.view(np.uint64), freq).astype(np.int64)
    g = v.groupby(keys + ["_b"], sort=True)
    out = pd.DataFrame({"buy_volume": g["_buy"].sum(), "sell_volume": g["_sell"].sum()})
    out["delta"] = out["buy_volume"] - out["sell_volume"]
    out["cvd"] = out.groupby(level=[0, 1])["delta"].cumsum()
    out = out.reset_index()
    out.index = ns_to_datetime(out.pop("_b").to_numpy().astype(np.uint64)).rename("ts")
    return out


def volume_profile(source: Source, *, instrument_id: int | None = None,
                   publisher_id: int | None = None, start=None, end=None) -> pd.DataFrame:
    """Traded volume by price (lots), split by aggressor, over ``[start, end)``.

    Indexed by ``price`` (currency units), sorted by book then price, with
    ``instrument_id``, ``publisher_id``, ``buy_volume``, ``sell_volume``, ``none_volume``,
    ``volume`` and ``trades``.

    >>> volume_profile(mbo_lab.demo_path(), instrument_id=1001)["volume"].plot.barh()  # doctest: +SKIP
    """
    v = _volumes(trade_tape(source, instrument_id=instrument_id, publisher_id=publisher_id,
                            start=start, end=end))
    g = v.groupby(["instrument_id", "publisher_id", "price"], sort=True)
    out = pd.DataFrame({
        "buy_volume": g["_buy"].sum(),
        "sell_volume": g["_sell"].sum(),
        "none_volume": g["_none"].sum(),
        "volume": g["_vol"].sum(),
        "trades": g.size(),
    }).reset_index(level=[0, 1])
    return out
