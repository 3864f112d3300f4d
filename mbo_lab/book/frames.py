"""Frame containers: book states at F_LAST records, and their conversion to pandas.

A :class:`BookFrames` holds, for every record with F_LAST, the index of that record and the
top-N levels (int64 fixed-point prices, sizes, counts) of the record's book, plus its cross
state. :meth:`BookFrames.to_df` gives Databento's MBP column naming (``bid_px_00``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..io.records import FIXED_PRICE_SCALE, UNDEF_PRICE, ns_to_datetime

__all__ = ["BookFrames", "CROSS_NONE", "CROSS_LOCKED", "CROSS_CROSSED"]

CROSS_NONE = 0
CROSS_LOCKED = 1
CROSS_CROSSED = 2


@dataclass
class BookFrames:
    """Book states at F_LAST records.

    Attributes
    ----------
    index : int64 (n,)
        Record index (in the source) of each state's F_LAST record.
    bid_px, ask_px : int64 (n, levels)
        Level prices, fixed-point 1e-9, ``UNDEF_PRICE`` where the level is empty.
    bid_sz, ask_sz : int64 (n, levels)
        Level sizes (lots), 0 where empty.
    bid_ct, ask_ct : int32 (n, levels)
        Orders per level, 0 where empty (and for top-of-book levels).
    cross : int8 (n,)
        0 normal (or a side empty), 1 locked (bid == ask), 2 crossed (bid > ask).
    trades : int64 (t,)
        Record indices of Trade records.
    counters : dict[str, int]
        Anomaly counters of the engine after the run.
    level_log : int64 (k, 4)
        Level changes of the book selected with ``NumbaEngine.apply(log_key=...)``:
        ``[record_index, side (0 bid, 1 ask), price (fixed 1e-9), new size (lots)]``;
        shape (0, 4) when no book was selected.
    """

    index: np.ndarray
    bid_px: np.ndarray
    bid_sz: np.ndarray
    bid_ct: np.ndarray
    ask_px: np.ndarray
    ask_sz: np.ndarray
    ask_ct: np.ndarray
    cross: np.ndarray
    trades: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counters: dict[str, int] = field(default_factory=dict)
    level_log: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))

    @property
    def levels(self) -> int:
        return self.bid_px.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls, n: int, levels: int) -> BookFrames:
        return cls(
            index=np.zeros(n, np.int64),
            bid_px=np.full((n, levels), UNDEF_PRICE, np.int64),
            bid_sz=np.zeros((n, levels), np.int64),
            bid_ct=np.zeros((n, levels), np.int32),
            ask_px=np.full((n, levels), UNDEF_PRICE, np.int64),
            ask_sz=np.zeros((n, levels), np.int64),
            ask_ct=np.zeros((n, levels), np.int32),
            cross=np.zeros(n, np.int8),
        )

    @classmethod
    def uninitialized(cls, n: int, levels: int) -> BookFrames:
        """Like :meth:`empty` without the fill, for writers that set every cell (the
        kernel does): skips a pass over memory that is about to be overwritten."""
        return cls(
            index=np.empty(n, np.int64),
            bid_px=np.empty((n, levels), np.int64),
            bid_sz=np.empty((n, levels), np.int64),
            bid_ct=np.empty((n, levels), np.int32),
            ask_px=np.empty((n, levels), np.int64),
            ask_sz=np.empty((n, levels), np.int64),
            ask_ct=np.empty((n, levels), np.int32),
            cross=np.empty(n, np.int8),
        )

    @classmethod
    def concat(cls, parts: list[BookFrames], levels: int) -> BookFrames:
        if not parts:
            return cls.empty(0, levels)
        out = cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in
              ("index", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct", "cross",
               "trades")),
        )
        out.counters = dict(parts[-1].counters)
        out.level_log = np.concatenate([p.level_log for p in parts])
        return out

    def truncate(self, n: int) -> BookFrames:
        """The first ``n`` states (views)."""
        return BookFrames(self.index[:n], self.bid_px[:n], self.bid_sz[:n], self.bid_ct[:n],
                          self.ask_px[:n], self.ask_sz[:n], self.ask_ct[:n], self.cross[:n],
                          self.trades, dict(self.counters), self.level_log)

    def equals(self, other: BookFrames) -> bool:
        """True when both hold the same states (indices, levels, cross states)."""
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("index", "bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct",
                      "cross")
        )

    def to_df(self, records: np.ndarray, symbols: dict[int, str] | None = None,
              price_type: str = "float") -> pd.DataFrame:
        """MBP-style table, one row per F_LAST record, Databento column names.

        ``records`` are the source records the indices point into (index 0 = first).
        Prices are float (NaN where a level is empty) or, with ``price_type="fixed"``,
        int64 fixed-point with ``UNDEF_PRICE`` for empty levels.
        """
        rec = records[self.index] if len(self.index) else records[:0]
        cols: dict[str, np.ndarray] = {
            "ts_event": ns_to_datetime(rec["ts_event"]),
            "instrument_id": rec["instrument_id"],
            "publisher_id": rec["publisher_id"],
            "sequence": rec["sequence"],
            "record_index": self.index,
        }
        if symbols is not None:
            cols["symbol"] = np.array([symbols.get(int(i), "") for i in rec["instrument_id"]],
                                      dtype=object)
        sides = (("bid", self.bid_px, self.bid_sz, self.bid_ct),
                 ("ask", self.ask_px, self.ask_sz, self.ask_ct))
        for k in range(self.levels):
            for side, px, _, _ in sides:
                cols[f"{side}_px_{k:02d}"] = _prices(px[:, k], price_type)
            for side, _, sz, _ in sides:
                cols[f"{side}_sz_{k:02d}"] = sz[:, k]
            for side, _, _, ct in sides:
                cols[f"{side}_ct_{k:02d}"] = ct[:, k]
        cols["crossed"] = self.cross == CROSS_CROSSED
        cols["locked"] = self.cross == CROSS_LOCKED
        index = ns_to_datetime(rec["ts_recv"]).rename("ts_recv")
        return pd.DataFrame(cols, index=index)


def _prices(px: np.ndarray, price_type: str) -> np.ndarray:
    if price_type == "fixed":
        return px
    if price_type != "float":
        raise ValueError("price_type must be 'float' or 'fixed'")
    out = px.astype(np.float64) / FIXED_PRICE_SCALE
    out[px == UNDEF_PRICE] = np.nan
    return out
