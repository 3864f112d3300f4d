"""Liquidity grid: the Numba accumulator equals a slow computation from the reference book's
states at F_LAST (hand-checked cases, randomized synthetic streams with clears, crossed
states and a top-of-book publisher, CLX5), and the Session APIs built on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import STEP, T0, build_records, rec

import mbo_lab
from mbo_lab.book.grid import (
    GridAccumulator,
    LiquidityGrid,
    large_order_episodes,
    price_grid,
    time_edges,
)
from mbo_lab.book.reference import Market
from mbo_lab.io.records import F_LAST, F_TOB, SIDE_ASK, SIDE_BID, UNDEF_PRICE, kernel_view

PX = 1_000_000_000  # 1.0 in fixed point


# --------------------------------------------------------------------------- reference side


def _levels(book, side):
    return {p: s for p, s, _ in book.levels(side)}


def reference_pass(recs, key, s0, e):
    """Replay ``recs[:e]`` on the reference Market; return the start levels at ``s0``,
    the level log and BBO arrays for ``[s0, e)`` (what the kernel gives in contract A),
    and the book's states at its F_LAST records in ``[s0, e)``: (t, bids, asks, bb, ba)."""
    m = Market()
    iid, pub = key >> 16, key & 0xFFFF
    m.apply_records(recs[:s0])
    b = m.book(iid, pub)
    start = (_levels(b, SIDE_BID), _levels(b, SIDE_ASK))
    log, bb, ba, states = [], [], [], []
    prev = start
    act = recs["action"].view(np.uint8)
    sid = recs["side"].view(np.uint8)
    for i in range(s0, e):
        r = recs[i]
        m.apply(int(r["instrument_id"]), int(r["publisher_id"]), int(act[i]), int(sid[i]),
                int(r["price"]), int(r["size"]), int(r["order_id"]), int(r["flags"]),
                int(r["ts_recv"]))
        mine = (int(r["instrument_id"]), int(r["publisher_id"])) == (iid, pub)
        if mine:
            now = (_levels(b, SIDE_BID), _levels(b, SIDE_ASK))
            for side in (0, 1):
                for p in set(prev[side]) | set(now[side]):
                    if prev[side].get(p, 0) != now[side].get(p, 0):
                        log.append((i, side, p, now[side].get(p, 0)))
            prev = now
        if r["flags"] & F_LAST:
            bk = m.book(int(r["instrument_id"]), int(r["publisher_id"]))
            bid, ask = bk.bbo()
            bb.append(bid[0] if bid else UNDEF_PRICE)
            ba.append(ask[0] if ask else UNDEF_PRICE)
            if mine:
                states.append((int(r["ts_recv"]), dict(prev[0]), dict(prev[1]),
                               bb[-1], ba[-1]))
    return (start, np.array(log, np.int64).reshape(-1, 4), np.array(bb, np.int64),
            np.array(ba, np.int64), states)


def slow_grid(states, initial, edges, pe, trades):
    """The grid by its definition, from explicit states. ``initial`` = (bids, asks, bb, ba)
    of the state in effect at the window start, or None."""
    nb, nr = len(edges) - 1, len(pe) - 1
    t0, t_end = int(edges[0]), int(edges[-1])
    seq = []
    if initial is not None:
        seq.append((t0,) + tuple(initial))
    seq += [(max(t, t0),) + tuple(rest) for t, *rest in states]
    twa = np.zeros((2, nb, nr))
    mx = np.full((2, nb, nr), -1.0)
    bbo = np.full((8, nb), np.nan)
    opened = np.zeros(nb, bool)

    def rows(levels):
        out = np.zeros(nr)
        for p, s in levels.items():
            r = (p - pe[0]) // (pe[1] - pe[0])
            if 0 <= r < nr:
                out[r] += s
        return out

    def f(p):
        return np.nan if p == UNDEF_PRICE else p / 1e9

    for k, (s_i, bids, asks, bb, ba) in enumerate(seq):
        e_i = seq[k + 1][0] if k + 1 < len(seq) else t_end
        vals = (rows(bids), rows(asks))
        for b in range(nb):
            lo, hi = int(edges[b]), int(edges[b + 1])
            ov = min(e_i, hi) - max(s_i, lo)
            holds = (lo <= s_i < hi) or (b == nb - 1 and s_i == t_end) or (ov > 0)
            if not holds:
                continue
            for side in (0, 1):
                if ov > 0:
                    twa[side, b] += vals[side] * ov
                mx[side, b] = np.maximum(mx[side, b], vals[side])
            if not opened[b]:
                opened[b] = True
                bbo[0, b], bbo[4, b] = f(bb), f(ba)
            for j, p in ((0, bb), (4, ba)):
                if p != UNDEF_PRICE:
                    bbo[j + 1, b] = np.nanmax([bbo[j + 1, b], f(p)])
                    bbo[j + 2, b] = np.nanmin([bbo[j + 2, b], f(p)])
            bbo[3, b], bbo[7, b] = f(bb), f(ba)
    tf = seq[0][0] if seq else None
    for b in range(nb):
        cov = 0 if tf is None else int(edges[b + 1]) - max(int(edges[b]), tf)
        if cov <= 0:
            twa[:, b] = np.nan
            mx[:, b] = np.nan
        else:
            twa[:, b] /= cov
    vol = np.zeros((2, nb, nr))
    for t, px, size, side in trades:
        if t0 <= t < t_end:
            b = int(np.searchsorted(edges, t, "right")) - 1
            r = (px - pe[0]) // (pe[1] - pe[0])
            if 0 <= r < nr and side in (SIDE_BID, SIDE_ASK):
                vol[0 if side == SIDE_BID else 1, b, r] += size
    return twa, mx, vol, bbo


def fast_grid(recs, key, s0, e, edges, pe, start, log, bb, ba, has_state, chunk=997):
    acc = GridAccumulator(edges, pe, key)
    bids = sorted(start[0].items(), reverse=True)
    asks = sorted(start[1].items())
    acc.start(np.array([p for p, _ in bids], np.int64), np.array([s for _, s in bids], np.int64),
              np.array([p for p, _ in asks], np.int64), np.array([s for _, s in asks], np.int64),
              has_state)
    kv = kernel_view(recs)
    flast = np.flatnonzero(recs["flags"][s0:e] & F_LAST) + s0
    for lo in range(s0, e, chunk):
        hi = min(e, lo + chunk)
        sel = (log[:, 0] >= lo) & (log[:, 0] < hi)
        fsel = (flast >= lo) & (flast < hi)
        acc.add(kv[lo:hi], lo, np.ascontiguousarray(log[sel]), bb[fsel], ba[fsel])
    return acc.finish()


def check_window(recs, iid, pub, t0, t_end, bins, pe, chunk=997):
    """Grid of book (iid, pub) over [t0, t_end) on rows ``pe``: fast == slow."""
    key = (iid << 16) | pub
    ts = recs["ts_recv"].astype(np.int64)
    start_idx = int(np.searchsorted(ts, t0, "left"))
    e = int(np.searchsorted(ts, t_end, "left"))
    mine = (recs["instrument_id"].astype(np.int64) << 16 | recs["publisher_id"]) == key
    last_before = np.flatnonzero(mine[:start_idx] & (recs["flags"][:start_idx] & F_LAST > 0))
    has_state = len(last_before) > 0
    s0 = int(last_before[-1]) + 1 if has_state else 0
    start, log, bb, ba, states = reference_pass(recs, key, s0, e)
    initial = None
    if has_state:
        m = Market()
        m.apply_records(recs[:s0])
        bk = m.book(iid, pub)
        bid, ask = bk.bbo()
        initial = (_levels(bk, SIDE_BID), _levels(bk, SIDE_ASK),
                   bid[0] if bid else UNDEF_PRICE, ask[0] if ask else UNDEF_PRICE)
    edges = time_edges(t0, t_end, bins)
    trades = [(int(r["ts_recv"]), int(r["price"]), int(r["size"]), int(r["side"][0]))
              for r in recs[s0:e][mine[s0:e]] if r["action"] == b"T"]
    want = slow_grid(states, initial, edges, pe, trades)
    got = fast_grid(recs, key, s0, e, edges, pe, start, log, bb, ba, has_state, chunk)
    for name, w, g in zip(("twa", "max", "volume", "bbo"), want, got):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-9, equal_nan=True,
                                   err_msg=f"{name} differs")
    return got, len(states)


# --------------------------------------------------------------------------- hand-checked


def _hand_records():
    rows = [
        rec("A", "B", 100 * PX, 5, 1),                          # t=0 state 1: bid 100x5
        rec("A", "A", 102 * PX, 3, 2, flags=0),                 # t=1 pending
        rec("A", "B", 101 * PX, 4, 3),                          # t=2 state 2
        rec("T", "B", 102 * PX, 2, 0, flags=0),                 # t=3 trade, buy aggressor
        rec("C", "A", 102 * PX, 2, 2),                          # t=4 state 3: ask 102x1
        rec("M", "B", 103 * PX, 4, 3),                          # t=5 state 4: crossed 103>102
        rec("R"),                                               # t=6 state 5: empty book
        rec("A", "A", 101 * PX, 7, 9),                          # t=7 state 6
    ]
    return build_records(rows)


def test_hand_checked_cells():
    recs = _hand_records()
    t0, t_end = T0, T0 + 8 * STEP
    pe, m = price_grid(100 * PX, 103 * PX, 4, PX, tick_multiple=1)
    assert m == 1 and list(pe) == [100 * PX, 101 * PX, 102 * PX, 103 * PX, 104 * PX]
    (twa, mx, vol, bbo), n_states = check_window(recs, 1, 1, t0, t_end, 2, pe)
    assert n_states == 6
    # bin 0 = [T0, T0+4 STEP): bid 100: 5 lots for all 4 steps; bid 101: 4 lots from t=2
    np.testing.assert_allclose(twa[0, 0], [5, 4 * 2 / 4, 0, 0])
    np.testing.assert_allclose(twa[1, 0], [0, 0, 3 * 2 / 4, 0])  # ask 102x3 shown at t=2
    assert mx[1, 0, 2] == 3 and mx[0, 0, 1] == 4
    # bin 1 = [T0+4, T0+8): ask 102x1 at t=4,5 ; bid 103x4 at t=5 (crossed, shown); clear
    np.testing.assert_allclose(twa[1, 1], [0, 7 / 4, 1 * 2 / 4, 0])
    np.testing.assert_allclose(twa[0, 1], [5 * 2 / 4, 4 / 4, 0, 4 / 4])
    assert vol[0, 0, 2] == 2 and vol.sum() == 2
    # BBO path: bin 0 opens at bid 100 / ask NaN, closes 101 / 102; bin 1 high bid 103
    assert bbo[0, 0] == 100 and np.isnan(bbo[4, 0]) and bbo[3, 0] == 101 and bbo[7, 0] == 102
    assert bbo[1, 1] == 103 and np.isnan(bbo[3, 1]) and bbo[7, 1] == 101


def test_nan_before_first_state_and_pending_changes():
    recs = build_records([
        rec("A", "B", 100 * PX, 5, 1, flags=0),      # t=0..3 no state yet
        rec("N", flags=0), rec("N", flags=0), rec("N", flags=0),
        rec("A", "B", 100 * PX, 1, 2),                # t=4 first state: bid 100x6
        rec("A", "B", 100 * PX, 1, 3, flags=0),       # pending, never shown alone
        rec("C", "B", 0, 1, 3),                       # t=6 state: back to 6
        rec("N", flags=0),
    ])
    pe, _ = price_grid(100 * PX, 100 * PX, 1, PX, tick_multiple=1)
    (twa, mx, _, bbo), _ = check_window(recs, 1, 1, T0, T0 + 8 * STEP, 4, pe)
    assert np.isnan(twa[:, :2]).all() and np.isnan(bbo[:, :2]).all()
    assert twa[0, 2, 0] == 6 and mx[0, 2, 0] == 6 and mx[0, 3, 0] == 6  # 7 never shown


def test_window_in_the_middle_starts_from_the_state_in_effect():
    recs = _hand_records()
    pe, _ = price_grid(100 * PX, 103 * PX, 4, PX, tick_multiple=1)
    # window [t=3.5, t=7.5): the state in effect is state 2 (t=2)
    (twa, _, vol, bbo), _ = check_window(recs, 1, 1, T0 + 3 * STEP + 500, T0 + 7 * STEP + 500,
                                         4, pe)
    assert bbo[0, 0] == 101 and vol.sum() == 0  # the trade at t=3 is before the window


# --------------------------------------------------------------------------- randomized


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_synthetic_equals_reference(seed):
    recs = mbo_lab.synth_records(6_000, seed=seed, clear_snapshot_every=2_000)
    keys = recs["instrument_id"].astype(np.int64) << 16 | recs["publisher_id"]
    ts = recs["ts_recv"].astype(np.int64)
    rng = np.random.default_rng(seed)
    books = sorted({(int(k >> 16), int(k & 0xFFFF)) for k in np.unique(keys)})
    tob = [b for b in books if (recs["flags"][keys == (b[0] << 16 | b[1])] & F_TOB).any()]
    assert tob, "the synthetic stream should hold a top-of-book publisher"
    for iid, pub in books:
        sel = keys == (iid << 16 | pub)
        px = recs["price"][sel & (recs["price"] != UNDEF_PRICE) & (recs["action"] != b"C")]
        lo, hi = int(np.percentile(px, 5)), int(np.percentile(px, 95))
        a, b = np.sort(rng.integers(int(ts[0]), int(ts[-1]), 2))
        for t0, t_end, bins in ((int(ts[0]), int(ts[-1]) + 1, 13), (int(a), int(b) + 1, 7)):
            pe, _ = price_grid(lo, hi, 9, 10_000_000)
            check_window(recs, iid, pub, t0, t_end, bins, pe, chunk=int(rng.integers(50, 3000)))


def test_crossed_states_are_drawn_as_they_are():
    # a crossed book: bid 102 over ask 101, both rows hold size
    recs = build_records([rec("A", "A", 101 * PX, 2, 1), rec("A", "B", 102 * PX, 3, 2),
                          rec("N", flags=0)])
    pe, _ = price_grid(100 * PX, 103 * PX, 4, PX, tick_multiple=1)
    (twa, _, _, bbo), _ = check_window(recs, 1, 1, T0, T0 + 3 * STEP, 1, pe)
    assert twa[0, 0, 2] > 0 and twa[1, 0, 1] > 0
    assert bbo[3, 0] > bbo[7, 0]


def test_clx5_window_equals_reference(clx5):
    recs = clx5.records[:8_000]
    keys = recs["instrument_id"].astype(np.int64) << 16 | recs["publisher_id"]
    k = int(np.bincount(np.unique(keys, return_inverse=True)[1]).argmax())
    key = int(np.unique(keys)[k])
    ts = recs["ts_recv"].astype(np.int64)
    px = recs["price"][(keys == key) & (recs["action"] == b"A")]
    pe, _ = price_grid(int(px.min()), int(px.max()), 40, 10_000_000)
    _, n = check_window(recs, key >> 16, key & 0xFFFF, int(ts[2000]), int(ts[-1]) + 1, 50, pe)
    assert n > 100


# --------------------------------------------------------------------------- large orders


def test_large_orders_episodes():
    recs = build_records([
        rec("A", "B", 100 * PX, 1, 1), rec("A", "B", 100 * PX, 1, 2),
        rec("A", "A", 101 * PX, 1, 3), rec("A", "B", 99 * PX, 50, 4),   # large
        rec("A", "A", 102 * PX, 60, 5),                                 # large
        rec("C", "B", 0, 46, 4),                                        # 4 drops to 4
        rec("M", "A", 103 * PX, 60, 5),                                 # 5 moves: new episode
        rec("R"),                                                       # clear ends 5
        rec("A", "B", 98 * PX, 70, 6),                                  # still resting
    ] + [rec("A", "A", 110 * PX, 1, 20 + k) for k in range(6)])        # median add size 1
    kv = kernel_view(recs)
    t_end = T0 + 20 * STEP
    df, thr = large_order_episodes(kv, 0, len(kv), (1 << 16) | 1, T0, t_end)
    assert thr == 5 * 1  # median add size 1
    got = [(r.order_id, r.side, r.price, r.size, (r.ts_start - T0) // STEP,
            (r.ts_end - T0) // STEP) for r in df.itertuples()]
    assert got == [(4, "B", 99.0, 50, 3, 5), (5, "A", 102.0, 60, 4, 6),
                   (5, "A", 103.0, 60, 6, 7), (6, "B", 98.0, 70, 8, 20)]


# --------------------------------------------------------------------------- grid object


def test_liquidity_grid_to_frame_and_repr():
    recs = mbo_lab.synth_records(20_000, seed=4)
    s = mbo_lab.open(recs)
    g = s.liquidity(time_bins=50, price_rows=30)
    assert isinstance(g, LiquidityGrid)
    df = g.to_frame("bid_twa")
    assert df.shape == (50, 30)
    assert str(df.index.tz) == "UTC" and df.columns.dtype == np.float64
    assert np.allclose(np.diff(df.columns), g.tick * g.tick_multiple)
    assert g.nbytes > 0 and "LiquidityGrid" in g._repr_html_()
    with pytest.raises(ValueError):
        g.to_frame("nope")
    bbo = g.to_frame("bbo")
    assert list(bbo.columns)[:4] == ["bid_open", "bid_high", "bid_low", "bid_close"]
    _ = pd


def test_time_edges_and_price_grid():
    e = time_edges(10, 21, 4)
    assert e[0] == 10 and e[-1] == 21 and (np.diff(e) > 0).all()
    pe, m = price_grid(100 * PX, 140 * PX, 10, PX)
    assert m == 5 and pe[0] <= 100 * PX and pe[-1] > 140 * PX
    assert ((pe - pe[0]) % PX == 0).all()


@pytest.mark.parametrize("window", ["day", "zoom"])
def test_session_liquidity_equals_reference(window):
    """End to end: kernel level log + checkpoints + accumulator == the reference book."""
    recs = mbo_lab.synth_records(12_000, seed=9, clear_snapshot_every=4_000)
    s = mbo_lab.open(recs, checkpoint_every=2_500)
    iid, pub = s.instrument_id, s.publisher_id
    ts = recs["ts_recv"].astype(np.int64)
    if window == "day":
        t0, t_end, bins = int(ts[0]), int(ts[-1]) + 1, 17
    else:
        t0, t_end, bins = int(ts[6_100]) + 1, int(ts[8_700]), 11
    g = s.liquidity(t0, t_end, time_bins=bins, price_rows=30)
    (twa, mx, vol, bbo), n = check_window(recs, iid, pub, t0, t_end, bins,
                                          g.price_edges_fixed)
    assert n > 100
    np.testing.assert_allclose(np.stack([g.bid_twa, g.ask_twa]), twa, rtol=1e-12,
                               equal_nan=True)
    np.testing.assert_array_equal(np.stack([g.bid_max, g.ask_max]), mx)
    np.testing.assert_array_equal(np.stack([g.buy_volume, g.sell_volume]), vol)
    np.testing.assert_array_equal(g.to_frame("bbo").to_numpy().T, bbo)
    assert np.isfinite(g.bid_twa).sum() > bins  # not an empty picture


def test_liquidity_window_edges_and_errors():
    recs = mbo_lab.synth_records(8_000, seed=12)
    s = mbo_lab.open(recs)
    ts = recs["ts_recv"].astype(np.int64)
    # a window that starts before the data: bins before the book's first state are NaN
    g = s.liquidity(int(ts[0]) - 10**9, int(ts[0]) + 10**9, time_bins=4, price_rows=8)
    assert np.isnan(g.bid_twa[0]).all() and np.isnan(g.bid_close[0])
    assert np.isfinite(g.bid_twa[-1]).all()
    # after the data the last state holds until the window end
    g = s.liquidity(int(ts[-1]), int(ts[-1]) + 10**9, time_bins=3, price_rows=8)
    assert np.isfinite(g.bid_twa).all() and np.isfinite(g.bid_close).all()
    assert g.records < s.checkpoint_every + 2
    # pandas timestamps and strings work as bounds
    t = pd.Timestamp(int(ts[4000]), tz="UTC")
    g = s.liquidity(t, t + pd.Timedelta("1s"), time_bins=2, price_rows=4,
                    price_lo=6000.0, price_hi=6001.0)
    assert g.price_edges[0] <= 6000.0 and g.price_edges[-1] > 6001.0
    for bad in (dict(start=int(ts[5]), end=int(ts[5])), dict(time_bins=0),
                dict(tick_multiple=0), dict(price_lo=2.0, price_hi=1.0)):
        with pytest.raises(mbo_lab.MboLabError):
            s.liquidity(**bad)


def test_liquidity_checks_the_source_file_is_unchanged(tmp_path):
    path = tmp_path / "day.dbn"
    mbo_lab.write_dbn(path, mbo_lab.synth_records(3_000, seed=13))
    s = mbo_lab.open(str(path))
    s.liquidity(time_bins=3, price_rows=3)
    if not hasattr(s.data, "check_unchanged"):
        pytest.skip("MboData.check_unchanged (contract C) is not there yet")
    with open(path, "r+b") as fh:  # cut the last record in place
        fh.truncate(path.stat().st_size - 56)
    with pytest.raises(mbo_lab.DataError):
        s.liquidity(time_bins=3, price_rows=3)
