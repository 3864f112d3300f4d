"""The reference book's rules (mbo_lab.book.reference docstring), pinned on hand-written
record sequences.

Every sequence lives in :data:`CASES` so that ``test_kernel.py`` can replay the very same
records through the Numba kernel and compare it with the reference at every record.
Expected states are worked out by hand from the rules, never copied from a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import STEP, T0, build_records, rec

from mbo_lab.book.engine import ReferenceEngine
from mbo_lab.book.reference import COUNTER_NAMES, Book, Market, reference_states
from mbo_lab.io.records import F_LAST, F_SNAPSHOT, F_TOB, SIDE_ASK, SIDE_BID, UNDEF_PRICE

PX = 1_000_000_000  # 1.0 in fixed-point (1e-9 units)
P98, P99, P100, P101, P102, P105 = (p * PX for p in (98, 99, 100, 101, 102, 105))
UNDEF = int(UNDEF_PRICE)
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
B, A, N = "B", "A", "N"
BID, ASK = SIDE_BID, SIDE_ASK

#: name -> hand-written records (``rec`` dicts). Each has tests below pinning its result.
CASES: dict[str, list[dict[str, Any]]] = {
    # three bids at 100 in arrival order, one at 99; asks at 101 (two) and 102
    "add_fifo": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 3, 2), rec("A", B, P100, 2, 3),
        rec("A", B, P99, 7, 4), rec("A", A, P101, 4, 5), rec("A", A, P102, 6, 6),
        rec("A", A, P101, 1, 7),
    ],
    # cancel 2 of order 1's 5 lots; the cancel's own side and price are junk on purpose
    "partial_cancel": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 3, 2),
        rec("C", N, UNDEF, 2, 1),
    ],
    "full_cancel": [
        rec("A", B, P100, 5, 1), rec("A", B, P99, 3, 2),
        rec("C", B, P100, 5, 1),
    ],
    "unknown_cancel": [
        rec("A", B, P100, 5, 1),
        rec("C", B, P100, 5, 99),
        rec("C", B, P100, 5, 1, pub=2),  # same id, other book: unknown there
    ],
    "over_cancel": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 3, 2), rec("A", B, P99, 2, 3),
        rec("C", B, P100, 8, 1),
        rec("C", B, P99, 4_294_967_295, 3),
    ],
    "modify_price": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 3, 2), rec("A", B, P99, 4, 3),
        rec("M", B, P99, 5, 1),  # price change: back of the queue at 99
        rec("M", B, P99, 1, 2),  # price change with a size decrease: still back of queue
    ],
    "modify_size_up": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 3, 2),
        rec("M", B, P100, 6, 1),
    ],
    "modify_size_down": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 3, 2), rec("A", B, P100, 2, 3),
        rec("M", B, P100, 2, 1),  # decrease: keeps its place
        rec("M", B, P100, 3, 2),  # unchanged size: keeps its place
    ],
    "modify_side": [
        rec("A", B, P100, 5, 1), rec("A", A, P101, 3, 2),
        rec("M", A, P101, 5, 1),  # side change: back of the ask queue
    ],
    "modify_unknown": [
        rec("A", B, P100, 5, 1),
        rec("M", B, P100, 4, 9),  # unknown: counted, added at the back
        rec("M", A, P101, 0, 8),  # unknown with size 0: counted, nothing to add
    ],
    "modify_to_zero": [
        rec("A", B, P100, 5, 1), rec("A", B, P99, 3, 2),
        rec("M", B, P100, 0, 1),
    ],
    "non_book_actions": [
        rec("A", B, P100, 5, 1), rec("A", A, P101, 3, 2),
        rec("T", B, P101, 3, 77),
        rec("F", A, P101, 3, 2),
        rec("F", B, P100, 5, 1),
        rec("N", N, UNDEF, 0, 0),
        rec("T", N, P100, 1, 0, iid=9),  # a book never seen
        rec("F", B, P98, 9, 1, iid=9),
    ],
    "clear": [
        rec("A", B, P100, 5, 1), rec("A", A, P101, 3, 2),
        rec("A", B, P100, 4, 1, pub=2),
        rec("A", A, P102, 6, 3, iid=2),
        rec("R", N, UNDEF, 0, 0, flags=F_LAST | F_SNAPSHOT),
        rec("C", B, P100, 5, 1),  # gone with the clear: unknown
        rec("A", B, P99, 2, 1),  # not a duplicate any more
    ],
    "books_independent": [
        rec("A", B, P100, 5, 1),
        rec("A", B, P99, 3, 1, pub=2),
        rec("A", A, P101, 4, 1, iid=2),
        rec("A", A, P102, 7, 1, iid=2**32 - 1, pub=2**16 - 1),
        rec("C", B, P100, 5, 1),  # only book (1, 1)
        rec("A", B, P98, 6, 1, pub=2),  # duplicate in (1, 2) only
        rec("M", A, P101, 2, 1, iid=2),  # size decrease in (2, 1) only
    ],
    "tob": [
        rec("A", B, P99, 5, 1, pub=38), rec("A", B, P100, 3, 2, pub=38),
        rec("A", A, P101, 4, 3, pub=38),
        rec("A", B, P100, 10, 0, pub=38, flags=F_LAST | F_TOB),  # replaces the bid side
        rec("A", B, P99, 7, 0, pub=38, flags=F_LAST | F_TOB),  # and again
        rec("A", B, UNDEF, 0, 0, pub=38, flags=F_LAST | F_TOB),  # empties the bids
        rec("A", A, P102, 4, 0, pub=38, flags=F_LAST | F_TOB),  # replaces the asks
        rec("A", A, P102, 0, 0, pub=38, flags=F_LAST | F_TOB),  # size 0 empties them
        rec("C", B, P99, 5, 1, pub=38),  # dropped by the TOB add: unknown
    ],
    "tob_mixed": [
        rec("A", B, P100, 10, 0, pub=38, flags=F_LAST | F_TOB),
        rec("A", B, P100, 2, 5, pub=38),  # an order joins the TOB level
        rec("A", B, P100, 1, 6, pub=38),
        rec("M", B, P100, 3, 6, pub=38),  # size up: back of the queue
        rec("C", B, P100, 2, 5, pub=38),
        rec("C", B, P100, 3, 6, pub=38),  # last order gone, the TOB part stays
    ],
    "crossed": [
        rec("A", B, P101, 5, 1), rec("A", A, P100, 3, 2), rec("A", A, P99, 1, 3),
    ],
    "locked": [
        rec("A", B, P100, 5, 1), rec("A", A, P100, 3, 2),
    ],
    "duplicate_add": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 3, 2),
        rec("A", B, P100, 7, 1),  # same id again: the newest wins, at the back
        rec("A", A, P101, 4, 2),  # same id on the other side
    ],
    "side_none": [
        rec("A", B, P100, 5, 1),
        rec("A", N, P100, 5, 2),
        rec("M", N, P99, 3, 1),
        rec("A", N, P101, 5, 0, flags=F_LAST | F_TOB),
    ],
    "undef_price": [
        rec("A", B, P100, 5, 1),
        rec("A", B, UNDEF, 5, 2),
        rec("M", B, UNDEF, 3, 1),
        rec("M", A, UNDEF, 3, 7),  # unknown id, but the price makes it an undef_price
    ],
    "zero_size": [
        rec("A", B, P100, 5, 1),
        rec("A", B, P99, 0, 1),  # zero size with a live id: not a duplicate
        rec("A", A, P101, 0, 2),
    ],
    "bad_action": [
        rec("A", B, P100, 5, 1),
        rec("X", B, P100, 5, 1),
        rec("a", B, P99, 5, 3),
        rec("c", B, P100, 5, 1),
    ],
    "aggregated_bbo": [
        rec("A", B, P100, 5, 1), rec("A", B, P100, 2, 2), rec("A", A, P102, 4, 3),
        rec("A", B, P100, 3, 1, pub=2), rec("A", A, P101, 6, 2, pub=2),
        rec("A", B, P99, 9, 1, pub=3), rec("A", A, P101, 1, 2, pub=3),
        rec("A", B, P100, 4, 0, pub=38, flags=F_LAST | F_TOB),
        rec("A", B, P105, 1, 1, iid=2), rec("A", A, P98, 1, 2, iid=2),
    ],
    "extreme_prices": [
        rec("A", B, I64_MAX - 1, 1, 1), rec("A", B, I64_MIN, 2, 2), rec("A", B, -5 * PX, 3, 3),
        rec("A", B, 0, 4, 4), rec("A", B, 1, 5, 5),
        rec("A", A, I64_MIN + 1, 6, 6), rec("A", A, I64_MAX - 1, 7, 7), rec("A", A, -1, 8, 8),
        rec("A", A, 10**18, 9, 9),
        rec("M", B, I64_MIN, 4, 1),  # to the other end of the bid side
        rec("C", A, 0, 6, 6),
    ],
    "huge_ids_and_sizes": [
        rec("A", B, P100, 4_294_967_295, 2**64 - 1),
        rec("A", B, P100, 4_294_967_295, 2**63),
        rec("A", B, P100, 1, 2**63 - 1),
        rec("C", B, P100, 4_294_967_294, 2**64 - 1),
        rec("M", B, P100, 4_294_967_295, 2**63),  # unchanged size: keeps its place
    ],
    "trade_flags": [
        # states published only at F_LAST records, between them the book moves freely
        rec("A", B, P100, 5, 1, flags=0), rec("A", A, P101, 3, 2, flags=0),
        rec("T", B, P101, 3, 9),
        rec("F", A, P101, 3, 2, flags=0), rec("C", A, P101, 3, 2),
        rec("A", B, P99, 1, 3, flags=0),
    ],
}


def run(rows: list[dict[str, Any]]) -> Market:
    """Replay ``rows`` as a record array through :meth:`Market.apply_records`."""
    m = Market()
    m.apply_records(build_records(rows))
    return m


def run_direct(rows: list[dict[str, Any]]) -> Market:
    """Replay ``rows`` through :meth:`Market.apply` with plain integers."""
    m = Market()
    for i, r in enumerate(rows):
        m.apply(r["instrument_id"], r["publisher_id"], ord(r["action"]), ord(r["side"]),
                r["price"], r["size"], order_id=r["order_id"], flags=r["flags"],
                ts_recv=T0 + i * STEP)
    return m


def queue(book: Book, side: int, price: int) -> list[int]:
    """Order ids of one level, front of the queue first."""
    return [o.order_id for o in book._side(side)[price].orders]


def counters(**nonzero: int) -> dict[str, int]:
    out = dict.fromkeys(COUNTER_NAMES, 0)
    out.update(nonzero)
    return out


def state(m: Market) -> dict:
    """Everything observable of a market, for comparisons."""
    return {
        "counters": dict(m.counters),
        "books": {
            key: (b.levels(BID), b.levels(ASK), b.cross_state(),
                  {oid: (o.side, o.price, o.size, o.ts_recv, b.queue_position(oid))
                   for oid, o in b.orders.items()})
            for key, b in m.books.items() if b.bids or b.asks or b.orders
        },
    }


# --------------------------------------------------------------------------- both paths


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_and_apply_records_agree(name):
    assert state(run(CASES[name])) == state(run_direct(CASES[name]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_sizes_and_counts_consistent(name):
    """Level size = its orders' sizes (+ a TOB part), count = its orders, every live order
    in exactly one level, no empty level kept."""
    m = run(CASES[name])
    for b in m.books.values():
        seen = []
        for side, levels in ((BID, b.bids), (ASK, b.asks)):
            for px, lvl in levels.items():
                assert lvl.price == px
                assert lvl.size > 0
                assert lvl.size == lvl.tob_size + sum(o.size for o in lvl.orders)
                assert lvl.count == len(lvl.orders)
                for o in lvl.orders:
                    assert (o.side, o.price) == (side, px)
                    assert o.size > 0
                    seen.append(o.order_id)
        assert sorted(seen) == sorted(b.orders)


# --------------------------------------------------------------------------- add / cancel


def test_add_fifo():
    m = run(CASES["add_fifo"])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P100, 10, 3), (P99, 7, 1)]
    assert b.levels(ASK) == [(P101, 5, 2), (P102, 6, 1)]
    assert b.levels(BID, 1) == [(P100, 10, 3)]
    assert b.bbo() == ((P100, 10, 3), (P101, 5, 2))
    assert queue(b, BID, P100) == [1, 2, 3]
    assert queue(b, ASK, P101) == [5, 7]
    assert [b.queue_position(i) for i in (1, 2, 3, 4, 5, 6, 7)] == [0, 5, 8, 0, 0, 0, 4]
    assert b.cross_state() == 0
    assert m.counters == counters()
    o = b.order(2)
    assert (o.order_id, o.side, o.price, o.size, o.ts_recv) == (2, BID, P100, 3, T0 + STEP)


def test_partial_cancel_keeps_priority():
    m = run(CASES["partial_cancel"])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P100, 6, 2)]
    assert queue(b, BID, P100) == [1, 2]
    assert b.order(1).size == 3
    assert b.queue_position(2) == 3
    # the cancel's side N and UNDEF price are not consulted, so nothing is counted
    assert m.counters == counters()


def test_full_cancel_removes_order_and_level():
    m = run(CASES["full_cancel"])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P99, 3, 1)]
    assert P100 not in b.bids
    assert b.order(1) is None and b.queue_position(1) is None
    assert m.counters == counters()


def test_unknown_cancel_counted_no_change():
    m = run(CASES["unknown_cancel"])
    assert m.counters == counters(unknown_cancel=2)
    assert m.book(1, 1).levels(BID) == [(P100, 5, 1)]
    assert m.book(1, 2).levels(BID) == [] and m.book(1, 2).orders == {}


def test_over_cancel_counted_removed_never_negative():
    m = run(CASES["over_cancel"])
    assert m.counters == counters(over_cancel=2)
    b = m.book(1, 1)
    assert b.levels(BID) == [(P100, 3, 1)]
    assert queue(b, BID, P100) == [2]
    assert b.order(1) is None and b.order(3) is None


# --------------------------------------------------------------------------- modify


def test_modify_price_change_goes_to_back_of_new_level():
    m = run(CASES["modify_price"])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P99, 10, 3)]
    assert queue(b, BID, P99) == [3, 1, 2]
    assert [b.queue_position(i) for i in (3, 1, 2)] == [0, 4, 9]
    assert (b.order(1).price, b.order(1).size) == (P99, 5)
    assert m.counters == counters()


def test_modify_price_change_intermediate_state():
    m = run(CASES["modify_price"][:4])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P100, 3, 1), (P99, 9, 2)]
    assert queue(b, BID, P100) == [2]
    assert queue(b, BID, P99) == [3, 1]


def test_modify_size_increase_loses_priority():
    m = run(CASES["modify_size_up"])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P100, 9, 2)]
    assert queue(b, BID, P100) == [2, 1]
    assert b.queue_position(1) == 3 and b.queue_position(2) == 0
    assert b.order(1).size == 6
    assert m.counters == counters()


def test_modify_size_decrease_keeps_place():
    m = run(CASES["modify_size_down"][:4])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P100, 7, 3)]
    assert queue(b, BID, P100) == [1, 2, 3]
    assert [b.queue_position(i) for i in (1, 2, 3)] == [0, 2, 5]
    m = run(CASES["modify_size_down"])  # then an unchanged size: still in place
    b = m.book(1, 1)
    assert queue(b, BID, P100) == [1, 2, 3]
    assert [b.queue_position(i) for i in (1, 2, 3)] == [0, 2, 5]
    assert m.counters == counters()


def test_modify_keeps_original_add_time_when_requeued():
    m = run(CASES["modify_size_up"])
    assert m.book(1, 1).order(1).ts_recv == T0  # the add's time, not the modify's


def test_modify_side_change_goes_to_back_of_other_side():
    m = run(CASES["modify_side"])
    b = m.book(1, 1)
    assert b.levels(BID) == []
    assert b.levels(ASK) == [(P101, 8, 2)]
    assert queue(b, ASK, P101) == [2, 1]
    assert b.order(1).side == ASK
    assert m.counters == counters()


def test_modify_unknown_counted_and_added():
    m = run(CASES["modify_unknown"])
    b = m.book(1, 1)
    assert m.counters == counters(unknown_modify=2)
    assert b.levels(BID) == [(P100, 9, 2)]
    assert queue(b, BID, P100) == [1, 9]
    assert b.order(9).ts_recv == T0 + STEP
    assert b.levels(ASK) == [] and b.order(8) is None


def test_modify_to_zero_removes():
    m = run(CASES["modify_to_zero"])
    b = m.book(1, 1)
    assert b.levels(BID) == [(P99, 3, 1)]
    assert b.order(1) is None
    assert m.counters == counters()


# --------------------------------------------------------------------------- T, F, N, R


def test_trade_fill_none_never_change_the_book():
    rows = CASES["non_book_actions"]
    before = state(run(rows[:2]))
    m = run(rows)
    assert state(m) == before
    assert m.counters == counters()
    assert m.book(9, 1).bbo() == (None, None)


def test_clear_empties_only_its_book():
    rows = CASES["clear"]
    m = run(rows[:5])
    b = m.book(1, 1)
    assert b.levels(BID) == [] and b.levels(ASK) == [] and b.orders == {}
    assert m.book(1, 2).levels(BID) == [(P100, 4, 1)]
    assert m.book(2, 1).levels(ASK) == [(P102, 6, 1)]
    m = run(rows)
    assert m.counters == counters(unknown_cancel=1)
    assert m.book(1, 1).levels(BID) == [(P99, 2, 1)]
    assert m.book(1, 2).order(1).price == P100


def test_books_keyed_by_instrument_and_publisher():
    m = run(CASES["books_independent"])
    assert m.counters == counters(duplicate_add=1)
    assert m.book(1, 1).levels(BID) == [] and m.book(1, 1).orders == {}
    assert m.book(1, 2).levels(BID) == [(P98, 6, 1)]
    assert m.book(2, 1).levels(ASK) == [(P101, 2, 1)]
    assert m.book(2**32 - 1, 2**16 - 1).levels(ASK) == [(P102, 7, 1)]
    assert set(m.books) >= {(1, 1), (1, 2), (2, 1), (2**32 - 1, 2**16 - 1)}


# --------------------------------------------------------------------------- top of book


def test_tob_add_replaces_the_side():
    rows = CASES["tob"]
    b = run(rows[:4]).book(1, 38)
    assert b.levels(BID) == [(P100, 10, 0)]
    assert b.order(1) is None and b.order(2) is None
    assert b.levels(ASK) == [(P101, 4, 1)]  # the other side is untouched
    b = run(rows[:5]).book(1, 38)
    assert b.levels(BID) == [(P99, 7, 0)]
    b = run(rows[:6]).book(1, 38)
    assert b.levels(BID) == [] and b.levels(ASK) == [(P101, 4, 1)]
    b = run(rows[:7]).book(1, 38)
    assert b.levels(ASK) == [(P102, 4, 0)] and b.order(3) is None
    m = run(rows)
    b = m.book(1, 38)
    assert b.bbo() == (None, None) and b.orders == {}
    # a TOB add with UNDEF_PRICE is not an undef_price anomaly
    assert m.counters == counters(unknown_cancel=1)


def test_tob_level_shared_with_orders():
    rows = CASES["tob_mixed"]
    b = run(rows[:3]).book(1, 38)
    assert b.levels(BID) == [(P100, 13, 2)]
    assert b.queue_position(5) == 10 and b.queue_position(6) == 12
    b = run(rows[:4]).book(1, 38)
    assert b.levels(BID) == [(P100, 15, 2)]
    assert queue(b, BID, P100) == [5, 6] and b.queue_position(6) == 12
    b = run(rows[:5]).book(1, 38)
    assert b.levels(BID) == [(P100, 13, 1)] and b.queue_position(6) == 10
    m = run(rows)
    assert m.book(1, 38).levels(BID) == [(P100, 10, 0)]
    assert m.counters == counters()


# --------------------------------------------------------------------------- cross state


def test_crossed_book_kept_and_flagged():
    b = run(CASES["crossed"]).book(1, 1)
    assert b.levels(BID) == [(P101, 5, 1)]
    assert b.levels(ASK) == [(P99, 1, 1), (P100, 3, 1)]
    assert b.cross_state() == 2


def test_locked_book_flagged():
    b = run(CASES["locked"]).book(1, 1)
    assert b.bbo() == ((P100, 5, 1), (P100, 3, 1))
    assert b.cross_state() == 1


@pytest.mark.parametrize("rows, expected", [
    ([], 0),
    ([rec("A", B, P100, 5, 1)], 0),
    ([rec("A", A, P100, 5, 1)], 0),
    ([rec("A", B, P99, 5, 1), rec("A", A, P100, 5, 2)], 0),
    ([rec("A", B, P100, 5, 1), rec("A", A, P100, 5, 2)], 1),
    ([rec("A", B, P101, 5, 1), rec("A", A, P100, 5, 2)], 2),
])
def test_cross_state(rows, expected):
    assert run(rows).book(1, 1).cross_state() == expected


# --------------------------------------------------------------------------- anomalies


def test_duplicate_add_counted_and_replaced():
    rows = CASES["duplicate_add"]
    m = run(rows[:3])
    b = m.book(1, 1)
    assert m.counters == counters(duplicate_add=1)
    assert b.levels(BID) == [(P100, 10, 2)]
    assert queue(b, BID, P100) == [2, 1]
    assert b.order(1).size == 7 and b.order(1).ts_recv == T0 + 2 * STEP
    m = run(rows)
    b = m.book(1, 1)
    assert m.counters == counters(duplicate_add=2)
    assert b.levels(BID) == [(P100, 7, 1)]
    assert b.levels(ASK) == [(P101, 4, 1)]


def test_side_none_counted_and_ignored():
    m = run(CASES["side_none"])
    b = m.book(1, 1)
    assert m.counters == counters(side_none=3)
    assert b.levels(BID) == [(P100, 5, 1)] and b.levels(ASK) == []
    assert (b.order(1).price, b.order(1).size) == (P100, 5)
    assert b.order(2) is None


def test_undef_price_counted_and_ignored():
    m = run(CASES["undef_price"])
    b = m.book(1, 1)
    assert m.counters == counters(undef_price=3)
    assert b.levels(BID) == [(P100, 5, 1)] and b.levels(ASK) == []
    assert b.order(2) is None and b.order(7) is None


def test_zero_size_add_counted():
    m = run(CASES["zero_size"])
    b = m.book(1, 1)
    assert m.counters == counters(zero_size=2)
    assert b.levels(BID) == [(P100, 5, 1)] and b.levels(ASK) == []
    assert b.order(1).price == P100


def test_unknown_action_counted():
    m = run(CASES["bad_action"])
    assert m.counters == counters(bad_action=3)
    assert m.book(1, 1).levels(BID) == [(P100, 5, 1)]


def test_each_ignored_record_counted_once():
    """A record with several anomalies is one ignored record: one count."""
    rows = [rec("A", N, UNDEF, 0, 1), rec("M", N, UNDEF, 0, 2), rec("A", B, UNDEF, 0, 3),
            rec("Q", N, UNDEF, 0, 4)]
    m = run(rows)
    assert sum(m.counters.values()) == len(rows)
    assert m.counters["bad_action"] == 1
    assert state(m)["books"] == {}


# --------------------------------------------------------------------------- queries


def test_aggregated_bbo_across_publishers():
    m = run(CASES["aggregated_bbo"])
    # bids at 100: pub 1 (5 + 2, two orders), pub 2 (3, one), pub 38 TOB (4, no order)
    assert m.aggregated_bbo(1) == ((P100, 14, 3), (P101, 7, 2))
    assert m.aggregated_bbo(2) == ((P105, 1, 1), (P98, 1, 1))
    assert m.aggregated_bbo(7) == (None, None)
    assert m.book(1, 3).bbo() == ((P99, 9, 1), (P101, 1, 1))


def test_queue_position_unknown_is_none():
    m = run(CASES["add_fifo"])
    assert m.book(1, 1).queue_position(42) is None
    assert m.book(1, 2).queue_position(1) is None


def test_extreme_prices_sorted():
    m = run(CASES["extreme_prices"])
    b = m.book(1, 1)
    assert m.counters == counters()
    # order 1 left the top bid level (I64_MAX - 1) for the back of the I64_MIN queue
    assert b.levels(BID) == [(1, 5, 1), (0, 4, 1), (-5 * PX, 3, 1), (I64_MIN, 6, 2)]
    assert queue(b, BID, I64_MIN) == [2, 1]
    assert b.levels(ASK) == [(-1, 8, 1), (10**18, 9, 1), (I64_MAX - 1, 7, 1)]
    assert b.cross_state() == 2


def test_huge_ids_and_sizes():
    m = run(CASES["huge_ids_and_sizes"])
    b = m.book(1, 1)
    assert m.counters == counters()
    assert queue(b, BID, P100) == [2**64 - 1, 2**63, 2**63 - 1]
    assert b.levels(BID) == [(P100, 1 + 4_294_967_295 + 1, 3)]
    assert b.queue_position(2**63 - 1) == 1 + 4_294_967_295


# --------------------------------------------------------------------------- engine


def test_reference_engine_publishes_at_f_last_only():
    rows = CASES["trade_flags"]
    recs = build_records(rows)
    eng = ReferenceEngine(levels=2)
    f = eng.apply(recs)
    assert f.index.tolist() == [2, 4]
    # at the trade: bid 100x5, ask 101x3; after the cancel the ask side is empty
    assert f.bid_px[:, 0].tolist() == [P100, P100] and f.bid_sz[:, 0].tolist() == [5, 5]
    assert f.ask_px[:, 0].tolist() == [P101, UNDEF] and f.ask_sz[:, 0].tolist() == [3, 0]
    assert f.bid_px[:, 1].tolist() == [UNDEF, UNDEF] and f.bid_ct[:, 1].tolist() == [0, 0]
    assert f.trades.tolist() == [2]
    assert eng.records_applied == len(rows)
    top = eng.top(1, 1)  # after the last record, the bid at 99 is there
    assert top.bid_px[0].tolist() == [P100, P99]
    assert top.index.tolist() == [len(rows) - 1]
    states = list(reference_states(recs, levels=2))
    assert [s[0] for s in states] == [2, 4]
    assert states[1][2:] == ([(P100, 5, 1)], [], 0)


def test_reference_engine_order_query():
    eng = ReferenceEngine(levels=1)
    eng.apply(build_records(CASES["add_fifo"]))
    assert eng.order(1, 1, 2) == {"order_id": 2, "side": "B", "price": P100, "size": 3,
                                  "ts_recv": T0 + STEP, "queue_position": 5}
    assert eng.order(1, 1, 42) is None and eng.order(5, 5, 1) is None


def test_reference_engine_chunks_equal_one_pass():
    recs = build_records([r for name in sorted(CASES) for r in CASES[name]])
    one = ReferenceEngine(levels=3).apply(recs)
    eng = ReferenceEngine(levels=3)
    parts = [eng.apply(recs[a:b]) for a, b in ((0, 7), (7, 8), (8, 50), (50, len(recs)))]
    assert np.array_equal(np.concatenate([p.index for p in parts]), one.index)
    for f in ("bid_px", "bid_sz", "bid_ct", "ask_px", "ask_sz", "ask_ct", "cross"):
        assert np.array_equal(np.concatenate([getattr(p, f) for p in parts]), getattr(one, f))
    assert parts[-1].counters == one.counters
    assert one.index.tolist() == np.flatnonzero(recs["flags"] & F_LAST).tolist()
