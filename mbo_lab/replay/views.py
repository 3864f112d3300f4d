"""What the views ask a session for, computed by the kernel from checkpoints: the liquidity
grid of a window, the trades of a window, the BBO history before the current position, the
instrument's tick and the exchange time zone.

Every function here works on a scratch engine restored from the nearest checkpoint before
the window, so it never moves the session's own position or state, and its cost is the
records between that checkpoint and the window end (read in chunks, never copied).
"""

from __future__ import annotations

import logging
import time as _time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..book.engine import NumbaEngine
from ..book.grid import (
    GridAccumulator,
    LiquidityGrid,
    large_order_episodes,
    price_grid,
    resting_orders,
    time_edges,
)
from ..book.state import BookState
from ..errors import MboLabError
from ..io.records import FIXED_PRICE_SCALE, UNDEF_PRICE, byte_chars
from ..io.records import to_ns as records_to_ns
from . import scan

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

__all__ = ["liquidity", "trades_between", "history", "infer_tick", "guess_time_zone",
           "to_ns", "CHUNK_RECORDS"]

log = logging.getLogger(__name__)

#: Records per kernel call in a grid pass (bounded memory: level log and BBO of a chunk).
CHUNK_RECORDS = 1 << 18

#: Default history window of :func:`history` (ns) ...
HISTORY_SPAN_NS = 30 * 60 * 10**9
#: ... unless it holds more records than this (the cost of a history is its records).
HISTORY_MAX_RECORDS = 250_000

_TRADE_COLUMNS = ("price", "size", "side", "record_index")


def to_ns(value: Any, default: int) -> int:
    """:func:`mbo_lab.io.records.to_ns` of ``value``, or ``default`` for None."""
    return int(default) if value is None else records_to_ns(value)


def _check_source(session: Session) -> None:
    check = getattr(session.data, "check_unchanged", None)
    if check is not None:
        check()


def _window(session: Session, start: Any, end: Any) -> tuple[int, int, int, int]:
    """(t0, t_end, first record index with ts >= t0, first index with ts >= t_end)."""
    ts = session._ts
    t0 = to_ns(start, int(ts[0]))
    t_end = to_ns(end, int(ts[-1]) + 1)
    if t_end <= t0:
        raise MboLabError(
            f"the window is empty: end ({pd.Timestamp(t_end, tz='UTC')}) must be after start "
            f"({pd.Timestamp(t0, tz='UTC')})")
    i0 = int(scan.search_ts(session._kv, t0, False))
    e = int(scan.search_ts(session._kv, t_end, False))
    return t0, t_end, i0, e


def _scratch_engine(session: Session, position: int) -> tuple[NumbaEngine, int]:
    """A levels=1 engine at the nearest checkpoint at or before ``position``."""
    cps = session._checkpoints
    k = int(np.searchsorted(session._cp_positions, position, "right")) - 1
    cp = cps[max(k, 0)]
    # no reuse=True here: the grid reads each chunk's frames while the next one is applied
    return NumbaEngine(levels=1, state=BookState.from_compact(cp.state), trades=False), \
        cp.position


def _advance(eng: NumbaEngine, recs: np.ndarray, lo: int, hi: int, bar: Any = None) -> None:
    """Apply ``recs[lo:hi]`` to ``eng``, dropping the frames (into one reused buffer)."""
    reuse, eng.reuse = eng.reuse, True
    try:
        for a in range(lo, hi, CHUNK_RECORDS):
            b = min(hi, a + CHUNK_RECORDS)
            eng.apply(recs[a:b], base_index=a)
            if bar is not None:
                bar.update(b - a)
    finally:
        eng.reuse = reuse


def _progress_bar(progress: bool | None, total: int, desc: str) -> Any:
    if progress is False or total <= 0:
        return None
    from tqdm.auto import tqdm

    # None: show the bar only when the pass lasts more than 2 s
    return tqdm(total=total, unit="rec", unit_scale=True, desc=desc, leave=False,
                delay=0 if progress else 2.0)


def liquidity(session: Session, start: Any = None, end: Any = None, *, time_bins: int = 1000,
              price_rows: int = 400, price_lo: float | None = None,
              price_hi: float | None = None, tick_multiple: int | None = None,
              progress: bool | None = None, large_orders: bool = True,
              large_k: float = 5.0, stop_index: int | None = None) -> LiquidityGrid:
    """The :class:`~mbo_lab.book.grid.LiquidityGrid` of the session's selected book; see
    :meth:`Session.liquidity`."""
    t_start = _time.perf_counter()
    if int(time_bins) < 1 or int(price_rows) < 1:
        raise MboLabError(f"time_bins and price_rows must be >= 1, got {time_bins}, "
                          f"{price_rows}")
    if tick_multiple is not None and int(tick_multiple) < 1:
        raise MboLabError(f"tick_multiple must be >= 1, got {tick_multiple}")
    _check_source(session)
    kv, recs = session._kv, session.data.records
    iid, pub = session.instrument_id, session.publisher_id
    key = (iid << 16) | pub
    t0, t_end, i0, e = _window(session, start, end)
    if stop_index is not None:  # records after it are not part of the window
        e = max(i0, min(e, int(stop_index)))
    # the state in effect at t0 is the book's last F_LAST state before record i0
    # no backward scan when the book has no F_LAST before the window (it would read to 0)
    j = int(scan.prev_last(kv, i0 - 1, key)) \
        if i0 > 0 and 0 <= session._book_first_last <= i0 - 1 else -1
    has_state = j >= 0
    eng, cp = _scratch_engine(session, j + 1 if has_state else i0)
    s0 = j + 1 if has_state else cp
    bar = _progress_bar(progress, e - cp, "liquidity")
    try:
        _advance(eng, recs, cp, s0, bar)
        bid_px, bid_sz, _, ask_px, ask_sz, _ = eng.book_levels(iid, pub)
        # price rows
        tick_fx = int(round(session.tick * FIXED_PRICE_SCALE))
        pe, mult = _price_rows(kv, i0, e, key, t0, bid_px, ask_px, tick_fx, int(price_rows),
                               price_lo, price_hi, tick_multiple)
        edges = time_edges(t0, t_end, int(time_bins))
        acc = GridAccumulator(edges, pe, key)
        acc.start(bid_px, bid_sz, ask_px, ask_sz, has_state)
        resting = resting_orders(eng.state, iid, pub) if large_orders else None
        # three chains on two cores, every step releases the GIL: the kernel (sequential
        # state) feeds the accumulator one chunk behind; large orders read the records
        with ThreadPoolExecutor(max_workers=2) as pool:
            fut_large = pool.submit(large_order_episodes, kv, s0, e, key, t0, t_end, resting,
                                    k=large_k) if large_orders else None
            pending = None
            for a in range(s0, e, CHUNK_RECORDS):
                b = min(e, a + CHUNK_RECORDS)
                fr = eng.apply(recs[a:b], base_index=a, log_key=key)
                if pending is not None:
                    pending.result()
                pending = pool.submit(acc.add, kv[a:b], a, fr.level_log, fr.bid_px[:, 0],
                                      fr.ask_px[:, 0])
                if bar is not None:
                    bar.update(b - a)
            if pending is not None:
                pending.result()
            twa, mx, vol, bbo = acc.finish()
            if fut_large is not None:
                lo_df, thr = fut_large.result()
            else:
                lo_df, thr = large_order_episodes(kv, 0, 0, key, t0, t_end, None,
                                                  threshold=float("inf"))
    finally:
        if bar is not None:
            bar.close()
    g = LiquidityGrid(
        t_edges=edges, price_edges=pe.astype(np.float64) / FIXED_PRICE_SCALE,
        price_edges_fixed=pe, tick=tick_fx / FIXED_PRICE_SCALE, tick_multiple=int(mult),
        bid_twa=twa[0], ask_twa=twa[1], bid_max=mx[0], ask_max=mx[1],
        buy_volume=vol[0], sell_volume=vol[1],
        bid_open=bbo[0], bid_high=bbo[1], bid_low=bbo[2], bid_close=bbo[3],
        ask_open=bbo[4], ask_high=bbo[5], ask_low=bbo[6], ask_close=bbo[7],
        large_orders=lo_df, instrument_id=iid, publisher_id=pub, records=e - s0,
        states=acc.states, seconds=_time.perf_counter() - t_start,
        info={"replayed_from_checkpoint": s0 - cp, "large_order_threshold": thr,
              "first_record": s0, "end_record": e},
    )
    log.debug("liquidity grid %s in %.3f s", g.shape, g.seconds)
    return g


def _fixed(px: float) -> int:
    return int(round(float(px) * FIXED_PRICE_SCALE))


def _price_rows(kv, i0, e, key, t0, bid_px, ask_px, tick_fx, rows, price_lo, price_hi,
                tick_multiple) -> tuple[np.ndarray, int]:
    """Row edges (fixed) and tick multiple. Rows start at ``price_lo`` (rounded down to the
    tick) when it is given with a ``tick_multiple`` or alone, end at ``price_hi`` when only
    it is given, else are centred on the range (default: :func:`_default_range`)."""
    if price_lo is not None and price_hi is not None:
        lo, hi = _fixed(price_lo), _fixed(price_hi)
        if hi < lo:
            raise MboLabError(f"price_hi ({price_hi}) is below price_lo ({price_lo})")
        anchor = "centre" if tick_multiple is None else "lo"
    else:
        lo, hi = _default_range(kv, i0, e, key, t0, bid_px, ask_px, tick_fx)
        anchor = "centre"
        if price_lo is not None:
            lo, hi, anchor = _fixed(price_lo), max(hi, _fixed(price_lo)), "lo"
        elif price_hi is not None:
            lo, hi, anchor = min(lo, _fixed(price_hi)), _fixed(price_hi), "hi"
    if tick_multiple is None:
        span_ticks = (hi - lo) // tick_fx + 1
        mult = max(1, -(-span_ticks // rows))
    else:
        mult = int(tick_multiple)
    width = rows * mult * tick_fx
    if anchor == "lo":
        start = (lo // tick_fx) * tick_fx
    elif anchor == "hi":
        start = -((-hi) // tick_fx) * tick_fx + tick_fx - width
    else:
        start = (((lo + hi) // 2 - width // 2) // tick_fx) * tick_fx
    pe, _ = price_grid(start, start, rows, tick_fx, mult)
    return pe, mult


def _default_range(kv, i0, e, key, t0, bid_px, ask_px, tick_fx) -> tuple[int, int]:
    """Price range of a window: its trades and the touch at its start (or, without
    trades, its Add/Modify prices), padded by 10 % and 2 ticks each side."""
    tmin, tmax, amin, amax = scan.price_range(kv, i0, e, np.int64(key), np.int64(t0))
    cands = []
    if tmax >= tmin:
        cands += [int(tmin), int(tmax)]
    for arr in (bid_px, ask_px):
        if len(arr) and arr[0] != UNDEF_PRICE:
            cands.append(int(arr[0]))
    if not cands and amax >= amin:
        cands += [int(amin), int(amax)]
    if not cands:
        cands = [0, 100 * tick_fx]
    lo, hi = min(cands), max(cands)
    pad = (hi - lo) // 10 + 2 * tick_fx
    return lo - pad, hi + pad


def _trade_frame(recs: np.ndarray, idx: np.ndarray) -> pd.DataFrame:
    tr = recs[idx]
    px = tr["price"].astype(np.int64)
    price = np.where(px == UNDEF_PRICE, np.nan, px / FIXED_PRICE_SCALE)
    side = byte_chars(tr["side"])
    return pd.DataFrame(
        {"price": price.astype(np.float64), "size": tr["size"].astype(np.int64),
         "side": side, "record_index": idx.astype(np.int64)},
        index=pd.DatetimeIndex(tr["ts_recv"].astype("datetime64[ns]"),
                               name="ts_recv").tz_localize("UTC"))


def trades_between(session: Session, start: Any = None, end: Any = None,
                   max_trades: int = 5000) -> pd.DataFrame:
    """Trades of the selected book with ``start <= ts_recv < end``; see
    :meth:`Session.trades_between`."""
    _, _, i0, e = _window(session, start, end)
    key = np.int64((session.instrument_id << 16) | session.publisher_id)
    return _trades(session, i0, e, key, max_trades)


def _trades(session: Session, i0: int, e: int, key: np.int64, max_trades: int) -> pd.DataFrame:
    kv = session._kv
    out = np.zeros(4096, np.int64)
    n = int(scan.trades_in(kv, i0, e, key, out))
    if n > len(out):
        out = np.zeros(n, np.int64)
        scan.trades_in(kv, i0, e, key, out)
    idx = out[:n]
    if max_trades is not None and n > int(max_trades):
        sizes = session.data.records["size"][idx].astype(np.int64)
        keep = np.argsort(-sizes, kind="stable")[: int(max_trades)]
        idx = np.sort(idx[keep])
    return _trade_frame(session.data.records, idx)


def history(session: Session, points: int = 600, span_ns: int | None = None
            ) -> pd.DataFrame:
    """BBO path before the current position; see :meth:`Session.history`."""
    points = max(2, int(points))
    ts = session._ts
    t_end = int(ts[session.record_index]) + 1  # the current record's state included
    if span_ns:
        t0 = max(int(ts[0]), t_end - int(span_ns))
    else:  # 30 minutes, or the last HISTORY_MAX_RECORDS records when that is shorter
        k = max(0, session.position - HISTORY_MAX_RECORDS)
        t0 = max(int(ts[0]), t_end - HISTORY_SPAN_NS, int(ts[k]))
    t0 = min(t0, t_end - points)  # at least 1 ns per point
    g = liquidity(session, t0, t_end, time_bins=points, price_rows=1, price_lo=0.0,
                  price_hi=0.0, tick_multiple=1, progress=False, large_orders=False,
                  stop_index=session.position)
    bid, ask = g.bid_close, g.ask_close
    with np.errstate(invalid="ignore"):
        mid = np.where(bid <= ask, (bid + ask) / 2, np.nan)  # NaN when crossed or empty
    idx = pd.DatetimeIndex(g.t_edges[1:].astype("datetime64[ns]"), name="ts_recv"
                           ).tz_localize("UTC")
    df = pd.DataFrame({"bid": bid, "ask": ask, "mid": mid}, index=idx)
    key = np.int64((session.instrument_id << 16) | session.publisher_id)
    i0 = int(scan.search_ts(session._kv, t0, False))
    df.attrs["trades"] = _trades(session, i0, session.position, key, 5000)
    df.attrs["window"] = (t0, t_end)
    return df


def infer_tick(kv: np.ndarray, key: int) -> int:
    """The book's price increment (fixed 1e-9, 0 when unknown): the GCD of the differences
    between its Add/Modify/Trade prices, read from at most ~2M records spread over the
    stream (exact for top-of-book feeds and for any book whose prices sit on the grid)."""
    n = len(kv)
    g = 0
    parts = 8
    span = 1 << 18
    for k in range(parts):
        lo = (n * k) // parts
        hi = min(n, lo + span)
        g = int(np.gcd(g, int(scan.price_gcd(kv, lo, hi, np.int64(key), 1))))
        if g == 1:
            break
    return g


#: Dataset prefixes (Databento) -> exchange time zone.
TIME_ZONES = {"GLBX": "America/Chicago", "CME": "America/Chicago", "XCBT": "America/Chicago",
              "XNYM": "America/New_York", "XNAS": "America/New_York",
              "XNYS": "America/New_York", "IFEU": "Europe/London", "XEUR": "Europe/Berlin"}


def guess_time_zone(dataset: str, publisher_ids: list[int]) -> str:
    """Exchange time zone from the dataset code (``GLBX.MDP3`` -> America/Chicago) or the
    publisher (Databento publisher 1 = GLBX.MDP3); "UTC" otherwise."""
    ds = (dataset or "").upper()
    for prefix, tz in TIME_ZONES.items():
        if ds.startswith(prefix):
            return tz
    if not ds or ds.startswith("SYNTH"):
        if publisher_ids and all(p == 1 for p in publisher_ids):
            return "America/Chicago"
    return "UTC"
