"""Order-flow imbalance (Cont, Kukanov & Stoikov 2014) and its multi-level version (Xu,
Gould & Howison 2019, arXiv:1907.06230), from consecutive F_LAST states of each book.

For consecutive states ``n-1 -> n`` of one book and level ``m`` (1 = best)::

    e_n^m =   1{P_b,n >= P_b,n-1} q_b,n - 1{P_b,n <= P_b,n-1} q_b,n-1
            - 1{P_a,n <= P_a,n-1} q_a,n + 1{P_a,n >= P_a,n-1} q_a,n-1

with ``P`` the m-th price and ``q`` its size (lots). An empty bid level counts as price
-inf and size 0, an empty ask level as +inf and size 0. ``e^1`` is CKS's OFI; ``OFI^m``
over a bucket is the sum of ``e^m`` (Xu et al.'s multi-level OFI vector is
``(OFI^1, ..., OFI^M)``).

Left out: transitions into a state whose F_LAST record has F_SNAPSHOT (a snapshot is not
order flow), transitions from or into a crossed state, and a book's first state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..book.build import Source
from ..book.frames import CROSS_CROSSED, BookFrames
from ..io.records import F_SNAPSHOT, UNDEF_PRICE, ns_to_datetime
from ._base import _book_key, _buckets, _index, _prev_same_book, _states

__all__ = ["ofi_events", "ofi"]

_I64_MIN = np.iinfo(np.int64).min


def _contributions(fr: BookFrames, rec: np.ndarray, levels: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(e[n, m] in lots, valid[n]) for every state n (invalid rows are 0)."""
    n = len(fr)
    prev = _prev_same_book(_book_key(rec))
    has = prev >= 0
    p = np.where(has, prev, 0)
    valid = (has & (fr.cross != CROSS_CROSSED) & (fr.cross[p] != CROSS_CROSSED)
             & ((rec["flags"] & F_SNAPSHOT) == 0))
    bpx = np.where(fr.bid_px[:, :levels] == UNDEF_PRICE, _I64_MIN, fr.bid_px[:, :levels])
    apx = fr.ask_px[:, :levels]  # UNDEF_PRICE is already the largest int64: +inf
    bsz = fr.bid_sz[:, :levels]
    asz = fr.ask_sz[:, :levels]
    e = ((bpx >= bpx[p]) * bsz - (bpx <= bpx[p]) * bsz[p]
         - (apx <= apx[p]) * asz + (apx >= apx[p]) * asz[p])
    e = np.where(valid[:, None], e, 0).astype(np.int64)
    return (e if n else np.zeros((0, levels), np.int64)), valid


def ofi_events(source: Source, levels: int = 1, *, instrument_id: int | None = None,
               publisher_id: int | None = None, frames: BookFrames | None = None,
               engine: str | None = None) -> pd.DataFrame:
    """Per-state OFI contributions ``e^1..e^levels`` (lots), one row per counted transition.

    Columns ``instrument_id``, ``publisher_id``, ``record_index`` and ``e_1`` ...
    ``e_<levels>``; indexed by ``ts_recv`` of the later state.

    >>> ofi_events(mbo_lab.demo_path(), levels=3, instrument_id=1001).head()   # doctest: +SKIP
    """
    _, fr, rec = _states(source, levels, frames, engine, instrument_id, publisher_id)
    e, valid = _contributions(fr, rec, levels)
    rows = np.flatnonzero(valid)
    cols = {"instrument_id": rec["instrument_id"][rows],
            "publisher_id": rec["publisher_id"][rows],
            "record_index": fr.index[rows]}
    for m in range(levels):
        cols[f"e_{m + 1}"] = e[rows, m]
    return pd.DataFrame(cols, index=_index(rec[rows]))


def ofi(source: Source, freq: str = "1s", levels: int = 1, *,
        instrument_id: int | None = None, publisher_id: int | None = None,
        frames: BookFrames | None = None, engine: str | None = None) -> pd.DataFrame:
    """Order-flow imbalance per time bucket and book (lots).

    Parameters
    ----------
    freq : bucket length, a pandas duration ("1s", "100ms", "1min"); buckets start at
        multiples of it since the epoch (UTC).
    levels : 1 for Cont-Kukanov-Stoikov OFI; M > 1 adds the multi-level OFI of Xu et al.

    Returns
    -------
    DataFrame indexed by bucket start (``ts``, ``datetime64[ns, UTC]``) with
    ``instrument_id``, ``publisher_id``, ``ofi_1`` ... ``ofi_<levels>`` (sum of ``e^m``
    over the bucket, lots) and ``events`` (transitions counted). Every bucket from a
    book's first to its last counted transition is present (0 when nothing happened).

    >>> ofi(mbo_lab.demo_path(), "1s", levels=5, instrument_id=1001).head()   # doctest: +SKIP
    """
    ev = ofi_events(source, levels, instrument_id=instrument_id, publisher_id=publisher_id,
                    frames=frames, engine=engine)
    step = int(pd.Timedelta(freq).value)
    cols = [f"e_{m + 1}" for m in range(levels)]
    out = []
    if len(ev):
        b = _buckets(ev.index.asi8.view(np.uint64), freq).astype(np.int64)
        g = ev.assign(_b=b).groupby(["instrument_id", "publisher_id", "_b"], sort=True)
        summed = g[cols].sum()
        summed["events"] = g.size()
        for (iid, pub), part in summed.groupby(level=[0, 1], sort=True):
            bins = part.index.get_level_values(2).to_numpy()
            grid = np.arange(bins.min(), bins.max() + step, step, dtype=np.int64)
            part = part.droplevel([0, 1]).reindex(grid, fill_value=0)
            part.insert(0, "publisher_id", np.uint16(pub))
            part.insert(0, "instrument_id", np.uint32(iid))
            out.append(part)
    if out:
        res = pd.concat(out)
        idx = ns_to_datetime(res.index.to_numpy().astype(np.uint64)).rename("ts")
        res.index = idx
    else:
        res = pd.DataFrame({"instrument_id": np.zeros(0, np.uint32),
                            "publisher_id": np.zeros(0, np.uint16),
                            **{c: np.zeros(0, np.int64) for c in cols},
                            "events": np.zeros(0, np.int64)},
                           index=ns_to_datetime(np.zeros(0, np.uint64)).rename("ts"))
    res = res.rename(columns={f"e_{m + 1}": f"ofi_{m + 1}" for m in range(levels)})
    return res[["instrument_id", "publisher_id", *[f"ofi_{m + 1}" for m in range(levels)],
                "events"]]
