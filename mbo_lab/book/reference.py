"""The reference order book: plain Python on sortedcontainers, the readable specification.

The Numba kernel (:mod:`mbo_lab.book.kernel`) must equal this book at every F_LAST state;
the tests compare the two. It follows Databento's documented limit-order-book semantics
(https://databento.com/docs/examples/order-book/limit-order-book) and states every choice
for data Databento's example leaves open.

Rules (per book, keyed by ``(instrument_id, publisher_id)``)
---------------------------------------------------------------
Only Add (``A``), Cancel (``C``), Modify (``M``) and Clear (``R``) change a book. Trade
(``T``), Fill (``F``) and None (``N``) never do: on CME a fill's effect on the book arrives
as the Cancel or Modify that follows it.

``A`` add
    Append the order at the back of its (side, price) queue.
    *Anomalies*: side ``N`` -> counted ``side_none``, record ignored. Price
    ``UNDEF_PRICE`` -> counted ``undef_price``, ignored. Size 0 -> counted ``zero_size``,
    ignored. An order id already live in the same book -> counted ``duplicate_add``; the old
    order is removed and the new one added at the back of its queue (the newest record wins).
``A`` with F_TOB (top-of-book publishers)
    Replace the whole side by a single level of that price and size, with an order count
    of 0 (it is not an order); ``UNDEF_PRICE`` (or size 0) empties the side. Orders on that side are
    dropped.
``C`` cancel
    Subtract ``size`` from the order (partial cancel keeps queue priority); remove it at 0.
    The record's side and price are not consulted: the live order's are used.
    *Anomalies*: unknown order id -> counted ``unknown_cancel``, nothing changes (normal
    when a file starts mid-session: the order was placed before the first record). A cancel
    larger than the remaining size -> counted ``over_cancel``, the order is removed (sizes
    never go negative).
``M`` modify
    Set the order to (side, price, size). A price change (or side change) or a size
    increase loses priority (back of the queue at the new price); a size decrease or an
    unchanged size keeps the place. A modify to size 0 removes the order.
    *Anomalies*: unknown order id -> counted ``unknown_modify`` and treated as an add
    (Databento's rule; normal mid-session). Side ``N`` -> ``side_none``, ignored.
    ``UNDEF_PRICE`` -> ``undef_price``, ignored.
``R`` clear
    Remove every order and level of the book (both sides).
other action codes
    Counted ``bad_action``, ignored.

A crossed (best bid > best ask) or locked (equal) book is kept exactly as the records made
it and flagged; nothing is deleted to "uncross" it (CME pre-open books cross for real).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from sortedcontainers import SortedDict

from ..io.records import (
    ACTION_ADD,
    ACTION_CANCEL,
    ACTION_CLEAR,
    ACTION_FILL,
    ACTION_MODIFY,
    ACTION_NONE,
    ACTION_TRADE,
    F_LAST,
    F_TOB,
    SIDE_ASK,
    SIDE_BID,
    UNDEF_PRICE,
)

__all__ = ["Order", "Level", "Book", "Market", "COUNTER_NAMES"]

_UNDEF = int(UNDEF_PRICE)

#: Anomaly counters, in the order the kernel keeps them.
COUNTER_NAMES = (
    "unknown_cancel",
    "unknown_modify",
    "duplicate_add",
    "over_cancel",
    "side_none",
    "undef_price",
    "zero_size",
    "bad_action",
)
_C = {name: i for i, name in enumerate(COUNTER_NAMES)}


@dataclass
class Order:
    """A resting order. ``price`` fixed-point (1e-9), ``size`` in lots, ``ts_recv`` ns."""

    order_id: int
    side: int  # ord('A') or ord('B')
    price: int
    size: int
    ts_recv: int = 0


@dataclass
class Level:
    """One price level: FIFO queue of orders (front = first in priority)."""

    price: int
    orders: list[Order] = field(default_factory=list)
    tob_size: int = 0  # size of a top-of-book (F_TOB) level, which has no orders

    @property
    def size(self) -> int:
        return self.tob_size + sum(o.size for o in self.orders)

    @property
    def count(self) -> int:
        return len(self.orders)


class Book:
    """One order book (one instrument on one publisher)."""

    def __init__(self, instrument_id: int = 0, publisher_id: int = 0):
        self.instrument_id = instrument_id
        self.publisher_id = publisher_id
        self.bids: SortedDict = SortedDict()  # price -> Level, best = last
        self.asks: SortedDict = SortedDict()  # price -> Level, best = first
        self.orders: dict[int, Order] = {}

    # ---- queries
    def _side(self, side: int) -> SortedDict:
        return self.bids if side == SIDE_BID else self.asks

    def levels(self, side: int, n: int | None = None) -> list[tuple[int, int, int]]:
        """Top ``n`` levels of a side, best first: ``(price, size, count)``."""
        levels = self._side(side)
        keys = reversed(levels.keys()) if side == SIDE_BID else iter(levels.keys())
        out = []
        for px in keys:
            if n is not None and len(out) >= n:
                break
            lvl = levels[px]
            out.append((px, lvl.size, lvl.count))
        return out

    def best(self, side: int) -> tuple[int, int, int] | None:
        """Best level of a side ``(price, size, count)`` or None when empty."""
        top = self.levels(side, 1)
        return top[0] if top else None

    def bbo(self) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
        """(best bid, best ask), each ``(price, size, count)`` or None."""
        return self.best(SIDE_BID), self.best(SIDE_ASK)

    def cross_state(self) -> int:
        """0 normal or one side empty, 1 locked (bid == ask), 2 crossed (bid > ask)."""
        bid, ask = self.bbo()
        if bid is None or ask is None:
            return 0
        if bid[0] > ask[0]:
            return 2
        return 1 if bid[0] == ask[0] else 0

    def order(self, order_id: int) -> Order | None:
        return self.orders.get(order_id)

    def queue_position(self, order_id: int) -> int | None:
        """Total size ahead of the order in its FIFO level (lots), or None if unknown."""
        o = self.orders.get(order_id)
        if o is None:
            return None
        lvl = self._side(o.side)[o.price]
        ahead = lvl.tob_size
        for other in lvl.orders:
            if other is o:
                return ahead
            ahead += other.size
        raise AssertionError("order missing from its level")  # pragma: no cover

    # ---- mutations
    def _insert(self, o: Order) -> None:
        levels = self._side(o.side)
        lvl = levels.get(o.price)
        if lvl is None:
            lvl = levels[o.price] = Level(o.price)
        lvl.orders.append(o)
        self.orders[o.order_id] = o

    def _remove(self, o: Order) -> None:
        levels = self._side(o.side)
        lvl = levels[o.price]
        lvl.orders.remove(o)
        if not lvl.orders and lvl.tob_size == 0:
            del levels[o.price]
        del self.orders[o.order_id]

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.orders.clear()

    def clear_side(self, side: int) -> None:
        levels = self._side(side)
        for lvl in levels.values():
            for o in lvl.orders:
                del self.orders[o.order_id]
        levels.clear()


class Market:
    """All books of a stream plus the anomaly counters.

    >>> m = Market()
    >>> m.apply(1, 1, ord("A"), ord("B"), 100_000_000_000, 5, order_id=7, flags=0x80)
    >>> m.book(1, 1).bbo()
    ((100000000000, 5, 1), None)
    """

    def __init__(self) -> None:
        self.books: dict[tuple[int, int], Book] = {}
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    def book(self, instrument_id: int, publisher_id: int) -> Book:
        key = (instrument_id, publisher_id)
        b = self.books.get(key)
        if b is None:
            b = self.books[key] = Book(instrument_id, publisher_id)
        return b

    def aggregated_bbo(self, instrument_id: int
                       ) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
        """Consolidated BBO of one instrument across publishers: at the best price the
        sizes and counts of every publisher quoting it are summed."""
        bids, asks = [], []
        for (iid, _), b in self.books.items():
            if iid != instrument_id:
                continue
            bid, ask = b.bbo()
            if bid:
                bids.append(bid)
            if ask:
                asks.append(ask)

        def combine(levels, best):
            if not levels:
                return None
            px = best(lv[0] for lv in levels)
            same = [lv for lv in levels if lv[0] == px]
            return (px, sum(lv[1] for lv in same), sum(lv[2] for lv in same))

        return combine(bids, max), combine(asks, min)

    def apply(self, instrument_id: int, publisher_id: int, action: int, side: int,
              price: int, size: int, order_id: int = 0, flags: int = 0,
              ts_recv: int = 0) -> None:
        """Apply one MBO record (fields as integers; action/side as ASCII codes)."""
        c = self.counters
        if action in (ACTION_TRADE, ACTION_FILL, ACTION_NONE):
            return
        if action not in (ACTION_ADD, ACTION_CANCEL, ACTION_MODIFY, ACTION_CLEAR):
            c["bad_action"] += 1
            return
        book = self.book(instrument_id, publisher_id)
        if action == ACTION_CLEAR:
            book.clear()
            return
        if action == ACTION_CANCEL:
            o = book.orders.get(order_id)
            if o is None:
                c["unknown_cancel"] += 1
                return
            if size > o.size:
                c["over_cancel"] += 1
                book._remove(o)
            elif size == o.size:
                book._remove(o)
            else:
                o.size -= size
            return
        # A and M need a side and a price
        if side != SIDE_BID and side != SIDE_ASK:
            c["side_none"] += 1
            return
        if action == ACTION_ADD and flags & F_TOB:
            book.clear_side(side)
            if price != _UNDEF and size > 0:
                levels = book._side(side)
                levels[price] = Level(price, tob_size=size)
            return
        if price == _UNDEF:
            c["undef_price"] += 1
            return
        if action == ACTION_ADD:
            if size == 0:
                c["zero_size"] += 1
                return
            old = book.orders.get(order_id)
            if old is not None:
                c["duplicate_add"] += 1
                book._remove(old)
            book._insert(Order(order_id, side, price, size, ts_recv))
            return
        # modify
        o = book.orders.get(order_id)
        if o is None:
            c["unknown_modify"] += 1
            if size > 0:
                book._insert(Order(order_id, side, price, size, ts_recv))
            return
        if size == 0:
            book._remove(o)
        elif o.price != price or o.side != side or size > o.size:
            book._remove(o)
            book._insert(Order(order_id, side, price, size, o.ts_recv))
        else:
            o.size = size

    def apply_records(self, records: np.ndarray) -> None:
        """Apply MBO records (structured array in Databento's layout) in order."""
        for rec in _iter_fields(records):
            self.apply(*rec)


def _iter_fields(records: np.ndarray) -> Iterable[tuple]:
    """(instrument_id, publisher_id, action, side, price, size, order_id, flags, ts_recv)."""
    act = records["action"].view(np.uint8).tolist()
    sid = records["side"].view(np.uint8).tolist()
    return zip(
        records["instrument_id"].tolist(),
        records["publisher_id"].tolist(),
        act,
        sid,
        records["price"].tolist(),
        records["size"].tolist(),
        records["order_id"].tolist(),
        records["flags"].tolist(),
        records["ts_recv"].tolist(),
    )


def reference_states(records: np.ndarray, levels: int = 10, market: Market | None = None):
    """Replay ``records`` on a :class:`Market` and yield, at every record with F_LAST,
    ``(record_index, book, bid_levels, ask_levels, cross_state)`` for the record's book.

    Levels are lists of ``(price, size, count)``, best first, at most ``levels`` long.
    """
    m = market if market is not None else Market()
    for i, rec in enumerate(_iter_fields(records)):
        m.apply(*rec)
        if rec[7] & F_LAST:
            b = m.book(rec[0], rec[1])
            yield i, b, b.levels(SIDE_BID, levels), b.levels(SIDE_ASK, levels), b.cross_state()
