"""Tests of mbo_lab.analytics.

Each measure is compared with a slow, direct computation: the reference book
(:class:`mbo_lab.book.reference.Market`) stepped record by record, plain Python loops and
dicts. On the CME CLX5 sample a few values are derived by hand from the raw records (the
file starts mid-session with an empty book; the first 70 records are quoted in comments).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from conftest import build_records, rec

import mbo_lab
from mbo_lab import analytics as A
from mbo_lab.book.reference import Market, reference_states
from mbo_lab.io.records import (
    F_LAST,
    F_SNAPSHOT,
    F_TOB,
    FIXED_PRICE_SCALE,
    UNDEF_PRICE,
)

LEVELS = 3
SCALE = FIXED_PRICE_SCALE
UNDEF = int(UNDEF_PRICE)
NAN = float("nan")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    """20k synthetic records: 5 books (one top-of-book only), a snapshot every ~4k."""
    return mbo_lab.synth_records(20_000, seed=5, clear_snapshot_every=4_000)


@pytest.fixture(scope="module")
def ref_states(small):
    """Reference-book states at every F_LAST: (index, key, bids, asks, cross, flags)."""
    out = []
    for i, book, bids, asks, cross in reference_states(small, LEVELS):
        out.append((i, (book.instrument_id, book.publisher_id), list(bids), list(asks), cross,
                    int(small["flags"][i])))
    return out


@pytest.fixture(scope="module")
def frames(small):
    return A.book_frames(small, levels=LEVELS)[1]


def _close(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-12,
                               atol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------- quotes


def _ref_quotes(states):
    rows = []
    for _, _, bids, asks, cross, _ in states:
        if not bids or not asks or cross == 2:
            rows.append((NAN,) * 5)
            continue
        (pb, qb, _), (pa, qa, _) = bids[0], asks[0]
        b, a = pb / SCALE, pa / SCALE
        imb = (sum(x[1] for x in bids) - sum(x[1] for x in asks)) / \
            (sum(x[1] for x in bids) + sum(x[1] for x in asks))
        rows.append((a - b, (b + a) / 2, (b * qa + a * qb) / (qa + qb), (qb - qa) / (qb + qa),
                     imb))
    return np.array(rows, float).reshape(-1, 5)


def test_quotes_match_reference_book(small, ref_states, frames):
    want = _ref_quotes(ref_states)
    q = A.quotes(small)
    assert len(q) == len(ref_states)
    assert (q.index.asi8 == small["ts_recv"][[s[0] for s in ref_states]].astype(np.int64)).all()
    _close(q["spread"], want[:, 0])
    _close(q["mid"], want[:, 1])
    _close(q["weighted_mid"], want[:, 2])
    _close(q["imbalance"], want[:, 3])
    _close(A.spread(small), want[:, 0])
    _close(A.mid(small, frames=frames), want[:, 1])
    _close(A.weighted_mid(small, frames=frames), want[:, 2])
    _close(A.imbalance(small, levels=LEVELS, frames=frames), want[:, 4])
    _close(A.imbalance(small, levels=1, frames=frames), want[:, 3])


def test_quotes_one_book_selection(small, ref_states):
    keep = [k == (1003, 38) for _, k, *_ in ref_states]
    want = _ref_quotes([s for s, m in zip(ref_states, keep) if m])
    got = A.spread(small, instrument_id=1003, publisher_id=38)
    assert len(got) == int(np.sum(keep)) > 100
    _close(got, want[:, 0])


def test_quotes_nan_when_crossed_or_side_empty():
    p = lambda x: int(round(x * SCALE))  # noqa: E731
    recs = build_records([
        rec("A", "B", p(10.00), 100, 1),   # 0 ask side empty -> NaN
        rec("A", "A", p(10.02), 1, 2),     # 1 normal: spread 0.02
        rec("A", "B", p(10.03), 5, 3),     # 2 crossed (bid 10.03 > ask 10.02) -> NaN
        rec("C", "B", p(10.03), 5, 3),     # 3 normal again
        rec("A", "B", p(10.02), 1, 4),     # 4 locked: spread 0, mid 10.02
        rec("C", "A", p(10.02), 1, 2),     # 5 ask empty -> NaN
    ])
    q = A.quotes(recs)
    _close(q["spread"], [NAN, 0.02, NAN, 0.02, 0.0, NAN])
    _close(q["mid"], [NAN, 10.01, NAN, 10.01, 10.02, NAN])
    _close(q["weighted_mid"], [NAN, (10.00 * 1 + 10.02 * 100) / 101, NAN,
                               (10.00 * 1 + 10.02 * 100) / 101, 10.02, NAN])
    _close(A.imbalance(recs, levels=2), [NAN, 99 / 101, NAN, 99 / 101, (101 - 1) / 102, NAN])
    assert q["crossed"].tolist() == [False, False, True, False, False, False]


def test_frames_with_too_few_levels_are_refused(small, frames):
    with pytest.raises(A.AnalyticsError, match="levels=5"):
        A.imbalance(small, levels=5, frames=frames)


# --------------------------------------------------------------------------- OFI


def _ref_ofi_events(states, levels):
    """{record index: [e_1..e_M]} from consecutive reference states of each book."""
    prev: dict = {}
    out = {}
    for i, key, bids, asks, cross, flags in states:
        p = prev.get(key)
        prev[key] = (bids, asks, cross)
        if p is None or cross == 2 or p[2] == 2 or flags & F_SNAPSHOT:
            continue
        pb, pa = p[0], p[1]
        es = []
        for m in range(levels):
            def lvl(side, m, is_bid):
                if m < len(side):
                    return side[m][0], side[m][1]
                return (-math.inf if is_bid else math.inf), 0
            bp, bq = lvl(bids, m, True)
            bp0, bq0 = lvl(pb, m, True)
            ap, aq = lvl(asks, m, False)
            ap0, aq0 = lvl(pa, m, False)
            e = ((bp >= bp0) * bq - (bp <= bp0) * bq0 - (ap <= ap0) * aq + (ap >= ap0) * aq0)
            es.append(int(e))
        out[i] = es
    return out


def test_ofi_events_match_reference(small, ref_states, frames):
    want = _ref_ofi_events(ref_states, LEVELS)
    ev = A.ofi_events(small, LEVELS, frames=frames)
    got = {int(i): row for i, row in zip(ev["record_index"],
                                         ev[[f"e_{m + 1}" for m in range(LEVELS)]].values.tolist())}
    assert got == want
    # snapshot states are left out, and there are some in this stream
    snap_last = {s[0] for s in ref_states if s[5] & F_SNAPSHOT}
    assert snap_last and not snap_last & set(got)


def test_ofi_buckets_match_reference(small, ref_states, frames):
    want_ev = _ref_ofi_events(ref_states, 2)
    step = 250_000_000
    sums: dict = defaultdict(lambda: [0, 0, 0])
    for i, es in want_ev.items():
        key = (int(small["instrument_id"][i]), int(small["publisher_id"][i]))
        b = int(small["ts_recv"][i]) // step * step
        s = sums[(key, b)]
        s[0] += es[0]
        s[1] += es[1]
        s[2] += 1
    got = A.ofi(small, "250ms", levels=2, frames=frames)
    seen = set()
    for ts, row in zip(got.index.asi8, got.itertuples(index=False)):
        key = ((int(row.instrument_id), int(row.publisher_id)), int(ts))
        seen.add(key)
        assert [row.ofi_1, row.ofi_2, row.events] == sums.get(key, [0, 0, 0])
    assert set(sums) <= seen
    # buckets form a regular grid per book
    for _, part in got.groupby(["instrument_id", "publisher_id"]):
        assert (np.diff(part.index.asi8) == step).all()


def test_ofi_one_book_and_empty_selection(small):
    one = A.ofi(small, "1s", instrument_id=1002, publisher_id=1)
    assert set(one["instrument_id"]) == {1002}
    none = A.ofi(small, "1s", instrument_id=999)
    assert none.empty and list(none.columns) == ["instrument_id", "publisher_id", "ofi_1",
                                                 "events"]


# --------------------------------------------------------------------------- Stoikov


def _ref_microprice(states, key, n_imb, n_spread, tol=1e-10, max_iter=200):
    """Stoikov's estimator written out with dicts and loops (one book)."""
    seq = []
    for _, k, bids, asks, cross, flags in states:
        if k != key or flags & F_SNAPSHOT or not bids or not asks or cross:
            continue
        (pb, qb, _), (pa, qa, _) = bids[0], asks[0]
        if qb <= 0 or qa <= 0:
            continue
        seq.append((pb, pa, qb, qa))
    tick = min(pa - pb for pb, pa, _, _ in seq if pa > pb)
    states_ = []
    for pb, pa, qb, qa in seq:
        s = round((pa - pb) / tick)
        if 1 <= s <= n_spread:
            i = min(int(qb / (qb + qa) * n_imb), n_imb - 1)
            states_.append((s, i, round((pb + pa) / tick)))
    ns = n_imb * n_spread
    q = np.zeros((ns, ns))
    t = np.zeros((ns, ns))
    r = np.zeros((ns, 4))
    kpos = {-2: 0, -1: 1, 1: 2, 2: 3}
    for (s0, i0, m0), (s1, i1, m1) in zip(states_[:-1], states_[1:]):
        dm = m1 - m0
        if abs(dm) > 2:
            continue
        for a, b, d in (((s0 - 1) * n_imb + i0, (s1 - 1) * n_imb + i1, dm),
                        ((s0 - 1) * n_imb + n_imb - 1 - i0, (s1 - 1) * n_imb + n_imb - 1 - i1,
                         -dm)):
            if d == 0:
                q[a, b] += 1
            else:
                t[a, b] += 1
                r[a, kpos[d]] += 1
    for a in range(ns):
        tot = q[a].sum() + r[a].sum()
        if tot:
            q[a] /= tot
            t[a] /= tot
            r[a] /= tot
    inv = np.linalg.pinv(np.eye(ns) - q)
    g1 = inv @ r @ np.array([-1.0, -0.5, 0.5, 1.0])
    b = inv @ t
    g, term = g1.copy(), g1.copy()
    for _ in range(max_iter - 1):
        term = b @ term
        g += term
        if np.max(np.abs(term)) < tol:
            break
    return tick, g.reshape(n_spread, n_imb)


@pytest.mark.parametrize("key", [(1001, 1), (1002, 1)])
def test_microprice_matches_reference(small, ref_states, key):
    tick, g = _ref_microprice(ref_states, key, 6, 2)
    m = A.fit_microprice(small, instrument_id=key[0], publisher_id=key[1], n_imbalance=6,
                         n_spread=2)
    assert m.tick == tick and m.book == key and m.converged
    seen = m.counts > 0
    np.testing.assert_allclose(m.g[seen], g[seen], atol=1e-9)
    # symmetry of the estimator: g(I) = -g(1 - I)
    np.testing.assert_allclose(m.g, -m.g[:, ::-1], atol=1e-9, equal_nan=True)
    # micro-price = mid + g * tick in-model, NaN outside
    mp = A.microprice_stoikov(small, instrument_id=key[0], publisher_id=key[1],
                              n_imbalance=6, n_spread=2)
    q = A.quotes(small, instrument_id=key[0], publisher_id=key[1])
    s = np.rint(q["spread"].to_numpy() * SCALE / tick)
    qb, qa = q["bid_sz"].to_numpy(float), q["ask_sz"].to_numpy(float)
    i = np.minimum((qb / (qb + qa) * 6).astype(int), 5)
    s = np.where((s >= 1) & (s <= 2), s, 0).astype(int)
    snap = [bool(f & F_SNAPSHOT) for _, k, *_, f in ref_states if k == key]
    ok = (s > 0) & ~np.array(snap) & seen[np.maximum(s - 1, 0), i]
    assert ok.sum() > 1000 and mp[~ok].isna().all()
    exp = q["mid"].to_numpy() + g[np.maximum(s - 1, 0), i] * tick / SCALE
    _close(mp[ok], exp[ok])
    assert mp.attrs["models"][key].book == key


def test_microprice_needs_one_book(small):
    with pytest.raises(A.AnalyticsError, match="one book"):
        A.fit_microprice(small)


def test_weighted_mid_and_stoikov_are_different_measures(small):
    wm = A.weighted_mid(small, instrument_id=1001, publisher_id=1)
    mp = A.microprice_stoikov(small, instrument_id=1001, publisher_id=1)
    both = wm.notna() & mp.notna()
    assert both.sum() > 1000
    assert wm.name == "weighted_mid" and mp.name == "microprice_stoikov"
    assert not np.allclose(wm[both], mp[both])


# --------------------------------------------------------------------------- trades


def _ref_tape(records):
    rows = []
    for i, r in enumerate(records.tolist()):
        d = dict(zip(records.dtype.names, r))
        if d["action"] == b"T" and not d["flags"] & F_SNAPSHOT:
            rows.append((i, d["ts_recv"], d["instrument_id"], d["publisher_id"],
                         d["price"] / SCALE, d["size"], d["side"].decode()))
    return rows


def test_trade_tape_vwap_cvd_profile_match_direct_sums(small):
    ref = _ref_tape(small)
    tape = A.trade_tape(small)
    assert tape["record_index"].tolist() == [x[0] for x in ref]
    assert tape["side"].tolist() == [x[6] for x in ref]
    _close(tape["price"], [x[4] for x in ref])
    sign = {"B": 1, "A": -1, "N": 0}
    assert tape["signed_size"].tolist() == [sign[x[6]] * x[5] for x in ref]
    assert tape["aggressor"].tolist() == [{"B": "buy", "A": "sell", "N": "none"}[x[6]]
                                          for x in ref]
    # VWAP over a window, per book
    t0 = int(small["ts_recv"][0])
    start, end = t0 + 2_000_000_000, t0 + 9_000_000_000
    acc: dict = defaultdict(lambda: [0.0, 0, 0, 0, 0])
    for _, ts, iid, pub, px, sz, side in ref:
        if start <= ts < end:
            a = acc[(iid, pub)]
            a[0] += px * sz
            a[1] += sz
            a[2] += sz if side == "B" else 0
            a[3] += sz if side == "A" else 0
            a[4] += 1
    v = A.vwap(small, start=start, end=end)
    assert len(v) == len(acc)
    for row in v.itertuples():
        a = acc[(row.instrument_id, row.publisher_id)]
        assert row.vwap == pytest.approx(a[0] / a[1], rel=1e-12)
        assert (row.volume, row.buy_volume, row.sell_volume, row.trades) == tuple(a[1:])
    # per bucket
    vb = A.vwap(small, "1s", instrument_id=1001, publisher_id=1)
    for ts, row in zip(vb.index.asi8, vb.itertuples()):
        sel = [x for x in ref if (x[2], x[3]) == (1001, 1) and ts <= x[1] < ts + 10**9]
        assert row.vwap == pytest.approx(sum(x[4] * x[5] for x in sel) / sum(x[5] for x in sel))
        assert row.trades == len(sel)
    # cumulative volume delta
    cvd = A.cumulative_volume_delta(small, instrument_id=1002, publisher_id=1)
    run, want = 0, []
    for x in ref:
        if (x[2], x[3]) == (1002, 1):
            run += sign[x[6]] * x[5]
            want.append(run)
    assert cvd["cvd"].tolist() == want
    cb = A.cumulative_volume_delta(small, "2s", instrument_id=1002, publisher_id=1)
    assert cb["cvd"].iloc[-1] == want[-1]
    assert (cb["delta"] == cb["buy_volume"] - cb["sell_volume"]).all()
    # volume profile
    prof = A.volume_profile(small, instrument_id=1003, publisher_id=1)
    byp: dict = defaultdict(lambda: [0, 0, 0])
    for x in ref:
        if (x[2], x[3]) == (1003, 1):
            byp[x[4]]["BAN".index(x[6])] += x[5]
    assert sorted(byp) == prof.index.tolist()
    for px, row in prof.iterrows():
        assert [row.buy_volume, row.sell_volume, row.none_volume] == byp[px]
        assert row.volume == sum(byp[px])


# --------------------------------------------------------------------------- orders


def _ref_orders(records):
    """Order lives and flow counts from the reference Market, record by record."""
    m = Market()
    live: dict = {}       # (key, oid) -> info
    pending: dict = {}    # (key, oid) -> (info, R index) removed by a snapshot clear
    last_fill: dict = {}  # (key, oid) -> ts_event of its last fill
    done = []
    counts: dict = defaultdict(lambda: defaultdict(int))
    names = records.dtype.names

    def end(info, idx, reason):
        done.append((info["key"], info["oid"], info["birth"], idx, reason, info["known"],
                     info["filled"], info["mods"]))

    def flush_pending(key):
        for k in [k for k in pending if k[0] == key]:
            info, ridx = pending.pop(k)
            end(info, ridx, "cleared")

    for i, row in enumerate(records.tolist()):
        d = dict(zip(names, row))
        key = (d["instrument_id"], d["publisher_id"])
        act, oid, flags = d["action"], d["order_id"], d["flags"]
        snap = bool(flags & F_SNAPSHOT)
        c = counts[key]
        if act == b"T" and not snap:
            c["trades"] += 1
            c["traded_qty"] += d["size"]
        if flags & F_TOB:
            m.apply(key[0], key[1], ord(act), ord(d["side"]), d["price"], d["size"], oid, flags,
                    d["ts_recv"])
            continue
        k = (key, oid)
        book = m.book(*key)
        was = book.orders.get(oid)
        before = was.size if was is not None else 0
        same_fill = last_fill.get(k) == d["ts_event"]
        if act == b"R":
            flush_pending(key)
            for o in list(book.orders):
                info = live.pop((key, o))
                if snap:
                    pending[(key, o)] = (info, i)
                else:
                    end(info, i, "cleared")
        elif act == b"A" and not snap:
            c["adds"] += 1
            c["added_qty"] += d["size"]
        if act in (b"A", b"C", b"M", b"F") and k in pending:
            info, ridx = pending.pop(k)
            if act == b"A" and snap:
                live[k] = info
            else:
                end(info, ridx, "cleared")
        m.apply(key[0], key[1], ord(act), ord(d["side"]), d["price"], d["size"], oid, flags,
                d["ts_recv"])
        now = book.orders.get(oid)
        if act == b"F":
            last_fill[k] = d["ts_event"]
            if k in live:
                live[k]["filled"] += d["size"]
        elif act == b"A":
            if k in live and not snap:
                end(live.pop(k), i, "replaced")
            if k not in live:
                live[k] = dict(key=key, oid=oid, birth=i, known=not snap, filled=0, mods=0)
        elif act == b"C":
            if same_fill:
                c["fill_removals"] += 1
            else:
                c["cancels"] += 1
                c["cancelled_qty"] += min(d["size"], before) if was is not None else d["size"]
            if was is not None and now is None:
                end(live.pop(k), i, "filled" if same_fill else "cancelled")
        elif act == b"M":
            if was is None:
                if d["size"] > 0:
                    live[k] = dict(key=key, oid=oid, birth=i, known=False, filled=0, mods=0)
                    c["fill_removals" if same_fill else "modifies"] += 1
                else:
                    c["fill_removals" if same_fill else "cancels"] += 1
            elif now is None:
                c["fill_removals" if same_fill else "cancels"] += 1
                if not same_fill:
                    c["cancelled_qty"] += before
                end(live.pop(k), i, "filled" if same_fill else "cancelled")
            else:
                c["fill_removals" if same_fill else "modifies"] += 1
                if not same_fill:
                    live[k]["mods"] += 1
    for k in list(pending):
        info, ridx = pending.pop(k)
        end(info, ridx, "cleared")
    for info in live.values():
        end(info, -1, "alive")
    return done, counts


def _lifetimes_as_set(df):
    return {((int(r.instrument_id), int(r.publisher_id)), int(r.order_id), int(r.add_index),
             int(r.end_index), str(r.end_reason), bool(r.birth_known), int(r.filled_size),
             int(r.modifies)) for r in df.itertuples()}


def test_order_lifetimes_and_counts_match_reference(small):
    done, counts = _ref_orders(small)
    want = {d for d in done}
    got = A.order_lifetimes(small, include_unknown=True)
    assert _lifetimes_as_set(got) == want
    known = A.order_lifetimes(small)
    assert known["birth_known"].all() and len(known) == sum(1 for d in done if d[5])
    live = known[known["end_reason"] != "alive"]
    ts = small["ts_recv"].astype(np.int64)
    assert (live["lifetime"].dt.total_seconds() * 1e9).round().astype(np.int64).tolist() == \
        (ts[live["end_index"]] - ts[live["add_index"]]).tolist()
    assert known.loc[known["end_reason"] == "alive", "lifetime"].isna().all()
    ctr = A.cancel_to_trade(small)
    for row in ctr.itertuples():
        c = counts[(row.instrument_id, row.publisher_id)]
        for name in ("adds", "added_qty", "cancels", "cancelled_qty", "modifies",
                     "fill_removals", "trades", "traded_qty"):
            assert getattr(row, name) == c[name], name
        if c["trades"]:
            assert row.cancel_to_trade == pytest.approx(c["cancels"] / c["trades"])
        else:
            assert math.isnan(row.cancel_to_trade)


def test_order_lifetimes_hand_built_cases():
    """Replaced, cleared, snapshot continuation, snapshot clear without re-add, unknown
    modify, fill-then-cancel: each end reason once."""
    recs = build_records([
        rec("A", "B", 100, 5, 1),                      # 0 order 1 born
        rec("A", "A", 200, 2, 2),                      # 1 order 2 born
        rec("A", "B", 101, 3, 1),                      # 2 order 1 re-added: 1st life replaced
        rec("M", "A", 201, 4, 3),                      # 3 unknown modify: order 3, birth unknown
        rec("R", "N", UNDEF, 0, 0, flags=F_SNAPSHOT),  # 4 snapshot clear
        rec("A", "B", 101, 3, 1, flags=F_SNAPSHOT),    # 5 order 1 re-added by the snapshot
        rec("A", "A", 201, 4, 3, flags=F_SNAPSHOT | F_LAST),  # 6 order 3 too (not order 2)
        rec("T", "B", 201, 4, 9, flags=0, ts_event=7),        # 7 trade
        rec("F", "A", 201, 4, 3, flags=0, ts_event=7),        # 8 fill of order 3
        rec("C", "A", 201, 4, 3, ts_event=7),                 # 9 fill removal -> filled
        rec("A", "A", 205, 1, 4),                      # 10 order 4
        rec("C", "A", 205, 1, 4),                      # 11 cancelled
        rec("R", "N", UNDEF, 0, 0),                    # 12 real clear: order 1 cleared
    ])
    lt = A.order_lifetimes(recs, include_unknown=True).set_index("add_index")
    got = {i: (int(r.order_id), r.end_reason, int(r.end_index), bool(r.birth_known))
           for i, r in lt.iterrows()}
    assert got == {
        0: (1, "replaced", 2, True),
        1: (2, "cleared", 4, True),
        2: (1, "cleared", 12, True),
        3: (3, "filled", 9, False),
        10: (4, "cancelled", 11, True),
    }
    assert lt.loc[3, "filled_size"] == 4
    done, counts = _ref_orders(recs)
    assert _lifetimes_as_set(A.order_lifetimes(recs, include_unknown=True)) == set(done)
    ctr = A.cancel_to_trade(recs).iloc[0]
    assert (ctr["adds"], ctr["cancels"], ctr["modifies"], ctr["fill_removals"],
            ctr["trades"]) == (4, 1, 1, 1, 1)


def _ref_queue(records, key, oid, lo, hi):
    """(record index, live, price, size, queue position) at every F_LAST of the book in
    [lo, hi], from the reference Market."""
    m = Market()
    m.apply_records(records[:lo])
    out = []
    for i in range(lo, hi + 1):
        m.apply_records(records[i: i + 1])
        r = records[i]
        if (int(r["instrument_id"]), int(r["publisher_id"])) != key or \
                not int(r["flags"]) & F_LAST:
            continue
        b = m.book(*key)
        o = b.order(oid)
        out.append((i, o is not None, o.price if o else None, o.size if o else 0,
                    b.queue_position(oid) if o else None))
    return out


def _check_queue(records, oid, key):
    qh = A.queue_history(records, oid, instrument_id=key[0], publisher_id=key[1])
    lo, hi = int(qh["record_index"].iloc[0]), int(qh["record_index"].iloc[-1])
    ref = {x[0]: x for x in _ref_queue(records, key, oid, lo, hi)}
    rows = list(qh.itertuples())
    for row in rows:
        i, live, px, size, qp = ref[int(row.record_index)]
        assert row.live == live
        assert row.size == size
        if live:
            assert row.price == px / SCALE and row.queue_position == qp
        else:
            assert math.isnan(row.queue_position)
    # between two rows nothing changed: every reference state equals the previous row's
    idx = [int(r.record_index) for r in rows]
    for i, x in ref.items():
        j = np.searchsorted(idx, i, "right") - 1
        r = rows[j]
        assert (x[1], x[3], x[4]) == (r.live, r.size, None if not r.live
                                      else int(r.queue_position)), i
    return qh


def test_queue_history_matches_reference(small):
    lt = A.order_lifetimes(small, instrument_id=1001, publisher_id=1)
    # a long-lived order that was eventually filled
    filled = lt[lt["end_reason"] == "filled"].sort_values("lifetime")
    row = filled.iloc[-1]
    qh = _check_queue(small, int(row.order_id), (1001, 1))
    assert len(qh) > 20
    assert qh["queue_position"].iloc[0] >= qh["queue_position"].dropna().iloc[-1]
    assert not qh["live"].iloc[-1] and qh["own_filled"].sum() == row.filled_size


def test_queue_history_unknown_order(small):
    with pytest.raises(A.AnalyticsError, match="never added"):
        A.queue_history(small, 123)


# --------------------------------------------------------------------------- CLX5


@pytest.fixture(scope="module")
def clx5_frames(clx5):
    return A.book_frames(clx5, levels=2)[1]


def test_clx5_quotes_by_hand(clx5, clx5_frames):
    """The file starts mid-session with an empty book; from its first records:

    0  A ask 1 @ 64.83 (id ...544)         -> bid side empty: NaN
    5  A bid 1 @ 64.82 (id ...579)         -> 64.82 x1 / 64.83 x1: spread .01, mid 64.825
    20 C ask ...544 (after its fill)       -> ask side empty again: NaN
    21 A bid 3 @ 64.83; 22, 23 bids @ 64.82; 24-39 cancels of unknown asks (no change)
    40 A ask 1 @ 64.84                     -> 64.83 x3 / 64.84 x1
    41 A ask 1 @ 64.84                     -> 64.83 x3 / 64.84 x2
    56 A bid 1 @ 64.83 (level: 3+1+1+1 = 6)
    57 T sell 6 @ 64.83, F 3+1+1+1, C 62-65 -> the 64.83 bid level is gone; 64.82 holds
       1 (5) + 2 (22) + 1 (23) + 1 (43, unknown M = add) + 3 (45) + 3 (50, unknown M) = 11;
       asks 64.84: ...633, ...639, ...689 (3 lots) -> 64.82 x11 / 64.84 x3
    """
    q = A.quotes(clx5, frames=clx5_frames).set_index(
        pd.Index(clx5_frames.index, name="record_index"))
    assert math.isnan(q.loc[0, "spread"])
    assert q.loc[5, ["bid_px", "ask_px", "bid_sz", "ask_sz"]].tolist() == [64.82, 64.83, 1, 1]
    assert q.loc[5, "spread"] == pytest.approx(0.01)
    assert q.loc[5, "mid"] == pytest.approx(64.825)
    assert math.isnan(q.loc[20, "spread"])
    assert q.loc[40, "weighted_mid"] == pytest.approx((64.83 * 1 + 64.84 * 3) / 4)
    assert q.loc[40, "imbalance"] == pytest.approx((3 - 1) / 4)
    assert q.loc[65, ["bid_px", "ask_px", "bid_sz", "ask_sz"]].tolist() == [64.82, 64.84, 11, 3]
    assert q.loc[65, "spread"] == pytest.approx(0.02)
    # OFI at the best level: 40: ask appears with 1 lot -> -1; 41: ask 1 -> 2 lots -> -1;
    # 65: the bid level of 6 lots traded away, asks unchanged -> -6
    ev = A.ofi_events(clx5, frames=clx5_frames).set_index("record_index")["e_1"]
    assert (ev[40], ev[41], ev[65]) == (-1, -1, -6)


def test_clx5_crossed_preopen(clx5, clx5_frames):
    """172 crossed F_LAST states, all in the CME pre-open; the first comes from a 10-lot bid
    at 64.90 at 21:47:19 UTC over resting asks (shared/docs/domain.md section 2)."""
    q = A.quotes(clx5, frames=clx5_frames)
    assert int(q["crossed"].sum()) == 172
    assert q.loc[q["crossed"], ["spread", "mid", "weighted_mid", "imbalance"]].isna().all().all()
    r = clx5.records
    i = int(np.flatnonzero((r["action"] == b"A") & (r["side"] == b"B") & (r["size"] == 10)
                           & (r["price"] == 64_900_000_000))[0])
    assert str(pd.Timestamp(int(r["ts_recv"][i]), tz="UTC"))[:19] == "2025-09-24 21:47:19"
    pos = int(np.searchsorted(clx5_frames.index, i))
    assert clx5_frames.index[pos] == i and q["crossed"].iloc[pos]
    first = int(np.flatnonzero(q["crossed"].to_numpy())[0])
    assert first == pos and not math.isnan(q["spread"].iloc[pos - 1])


def test_clx5_trades_by_hand(clx5):
    """Records 10-15: T buy 6 @ 64.83 (F 1+2+1+1+1); 57: T sell 6 @ 64.83. The file holds
    1,599 trades for 3,613 lots, 109 of them implied (side N) (domain.md 1.2)."""
    tape = A.trade_tape(clx5)
    r = clx5.records
    assert len(tape) == 1599 and int(tape["size"].sum()) == 3613
    assert int((tape["side"] == "N").sum()) == 109
    first = tape.iloc[0]
    assert (first.record_index, first.price, first["size"], first.side, first.signed_size) == \
        (10, 64.83, 6, "B", 6)
    assert (tape.iloc[1].record_index, tape.iloc[1].signed_size) == (57, -6)
    # VWAP of the first minute, straight from the raw records
    t0 = pd.Timestamp("2025-09-24 19:30", tz="UTC")
    t1 = t0 + pd.Timedelta("1min")
    ts = r["ts_recv"].astype(np.int64)
    sel = (r["action"] == b"T") & (ts >= t0.value) & (ts < t1.value)
    px, sz = r["price"][sel] / 1e9, r["size"][sel].astype(float)
    v = A.vwap(clx5, start=t0, end=t1).iloc[0]
    assert v.vwap == pytest.approx((px * sz).sum() / sz.sum(), rel=1e-12)
    assert v.volume == sz.sum() and v.trades == sel.sum()
    assert A.vwap(clx5, "1min").iloc[0].vwap == pytest.approx(v.vwap, rel=1e-12)
    prof = A.volume_profile(clx5)
    at = (r["action"] == b"T") & (r["price"] == 64_810_000_000)
    assert prof.loc[64.81, "volume"] == r["size"][at].sum()
    assert prof.loc[64.81, "buy_volume"] == r["size"][at & (r["side"] == b"B")].sum()
    cvd = A.cumulative_volume_delta(clx5)
    buy = r["size"][(r["action"] == b"T") & (r["side"] == b"B")].sum()
    sell = r["size"][(r["action"] == b"T") & (r["side"] == b"A")].sum()
    assert cvd["cvd"].iloc[-1] == int(buy) - int(sell)


def test_clx5_orders_by_hand(clx5):
    """Order ...314544 (A ask 1 @ 64.83 at record 0) is filled by the trade at 10 (F at 15)
    and removed by the C at 20 (same ts_event): lifetime = ts_recv[20] - ts_recv[0].
    Counts (domain.md 1.2): 16,252 C of which 2,286 follow a same-event F (full fills);
    2,701 M of which 412 are partial fills."""
    r = clx5.records
    lt = A.order_lifetimes(clx5)
    o = lt[lt["order_id"] == 8058566314544].iloc[0]
    assert (o.add_index, o.end_index, o.end_reason, o.filled_size) == (0, 20, "filled", 1)
    assert o.lifetime == pd.Timedelta(int(r["ts_recv"][20]) - int(r["ts_recv"][0]), "ns")
    # fill bookkeeping found by hand: the record right after each F with the same id
    after_fill = {"C": 0, "M": 0}
    f_idx = np.flatnonzero(r["action"] == b"F")
    for i in f_idx:
        j = i + 1 + int(np.flatnonzero(r["order_id"][i + 1:] == r["order_id"][i])[0])
        a = r["action"][j].decode()
        if a in after_fill and r["ts_event"][j] == r["ts_event"][i]:
            after_fill[a] += 1
    assert after_fill == {"C": 2286, "M": 412}
    ctr = A.cancel_to_trade(clx5).iloc[0]
    assert ctr["cancels"] == 16252 - 2286
    assert ctr["modifies"] == 2701 - 412
    assert ctr["fill_removals"] == 2286 + 412
    assert ctr["trades"] == 1599 and ctr["adds"] == 14959
    assert ctr["cancel_to_trade"] == pytest.approx((16252 - 2286) / 1599)


def test_clx5_queue_position_by_hand(clx5):
    """Order ...314690 (A bid 1 @ 64.83 at record 56) joins 3 (...621, record 21) + 1
    (...644, 48) + 1 (...645, 49) = 5 lots ahead; the sell at 57 fills all of them and it."""
    qh = A.queue_history(clx5, 8058566314690)
    first, last = qh.iloc[0], qh.iloc[-1]
    assert (first.record_index, first.queue_position, first["size"], first.price) == \
        (56, 5.0, 1, 64.83)
    assert (last.record_index, last.live, last.own_filled, last.filled_ahead) == \
        (65, False, 1, 0)
    q49 = A.queue_history(clx5, 8058566314645)
    assert q49.iloc[0].queue_position == 4.0
    _check_queue(clx5.records, 8058566314645, (432669, 1))


def test_clx5_microprice(clx5, clx5_frames):
    m = A.fit_microprice(clx5, frames=clx5_frames)
    assert m.tick == 10_000_000 and m.converged  # CL ticks are 0.01
    g1 = m.g[0]
    assert (np.diff(g1) > 0).all()  # more bid size -> higher expected price
    assert (np.abs(g1) < 0.5).all()  # within half a tick of the mid at a 1-tick spread
    np.testing.assert_allclose(g1, -g1[::-1], atol=1e-12)
    mp = A.microprice_stoikov(clx5, frames=clx5_frames)
    # record 5: 64.82 x1 / 64.83 x1 -> imbalance 1/2 (bucket 5): mid + g[1 tick, 5] * tick
    pos = int(np.searchsorted(clx5_frames.index, 5))
    assert mp.iloc[pos] == pytest.approx(64.825 + g1[5] * 0.01)
