"""Numba scans over the records of a session (kernel view, memory-mapped, never copied).

A session opens a day without index arrays per record: books and their record counts come
from one pass; F_LAST positions, a book's last record or trades are found by short scans
from the current position (F_LAST records are dense in MBO data, so scans are short).
Times are binary-searched on the ``ts_recv`` field in place (``np.searchsorted`` would copy
a strided field of a 100M-record map first).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_J = dict(cache=True, nogil=True)

F_LAST = 0x80
TRADE = 84  # 'T'


@njit(**_J)
def book_table(recs, lo, hi, hkeys, hcounts):
    """Count the records of each book ``key = instrument_id << 16 | publisher_id`` in
    ``recs[lo:hi]`` into the open-addressing table ``hkeys`` (-1 = empty) / ``hcounts``.
    Returns (F_LAST records, index of the first F_LAST record or -1, books, full) where
    ``full`` says the table needs to grow (counts so far stay valid; call again from the
    returned position is not needed: the caller grows and recounts)."""
    mask = hkeys.shape[0] - 1
    n_last = 0
    first = -1
    nb = 0
    last_key = np.int64(-2)
    last_slot = 0
    for i in range(lo, hi):
        r = recs[i]
        if r.flags & F_LAST:
            n_last += 1
            if first < 0:
                first = i
        key = (np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)
        if key != last_key:
            h = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)) & mask
            while hkeys[h] != key and hkeys[h] != -1:
                h = (h + 1) & mask
            if hkeys[h] == -1:
                if 2 * (nb + 1) > hkeys.shape[0]:
                    return n_last, first, nb, True
                hkeys[h] = key
                nb += 1
            last_key = key
            last_slot = h
        hcounts[last_slot] += 1
    return n_last, first, nb, False


@njit(**_J)
def prev_last(recs, i, key):
    """Largest index ``j <= i`` with F_LAST (of book ``key``; any book when key < 0), or -1."""
    j = i
    while j >= 0:
        r = recs[j]
        if r.flags & F_LAST:
            if key < 0 or ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) == key:
                return j
        j -= 1
    return -1


@njit(**_J)
def next_last(recs, i, stop, key):
    """Smallest index ``j >= i``, ``j < stop``, with F_LAST (of book ``key``; any book when
    key < 0), or -1."""
    for j in range(i, stop):
        r = recs[j]
        if r.flags & F_LAST:
            if key < 0 or ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) == key:
                return j
    return -1


@njit(**_J)
def nth_last(recs, i, n, key):
    """Index of the ``n``-th F_LAST record of book ``key`` (any book when key < 0) after
    record ``i`` (n > 0) or before it (n < 0), stopping at the first/last such record of
    the stream; ``i`` itself for n == 0."""
    best = i
    if n == 0:
        return i
    if n > 0:
        k = 0
        for j in range(i + 1, recs.shape[0]):
            r = recs[j]
            if r.flags & F_LAST and (key < 0 or ((np.int64(r.instrument_id) << 16)
                                                  | np.int64(r.publisher_id)) == key):
                best = j
                k += 1
                if k == n:
                    break
    else:
        k = 0
        j = i - 1
        while j >= 0:
            r = recs[j]
            if r.flags & F_LAST and (key < 0 or ((np.int64(r.instrument_id) << 16)
                                                  | np.int64(r.publisher_id)) == key):
                best = j
                k += 1
                if k == -n:
                    break
            j -= 1
    return best


@njit(**_J)
def first_of_book(recs, key):
    """Smallest index whose record belongs to book ``key``, or -1."""
    for j in range(recs.shape[0]):
        r = recs[j]
        if ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) == key:
            return j
    return -1


@njit(**_J)
def prev_of_book(recs, i, key):
    """Largest index ``j <= i`` whose record belongs to book ``key``, or -1."""
    j = i
    while j >= 0:
        r = recs[j]
        if ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) == key:
            return j
        j -= 1
    return -1


@njit(**_J)
def trades_in(recs, lo, hi, key, out):
    """Indices of the book's Trade records in ``recs[lo:hi]`` into ``out`` (when it is
    large enough); returns the count."""
    k = 0
    for j in range(lo, hi):
        r = recs[j]
        if r.action == TRADE and \
                ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) == key:
            if k < out.shape[0]:
                out[k] = j
            k += 1
    return k


@njit(**_J)
def price_range(recs, lo, hi, key, t0):
    """(min, max) trade price and (min, max) Add/Modify price of the book in
    ``recs[lo:hi]`` with ``ts_recv >= t0`` (int64 fixed; max < min when none)."""
    tmin = np.int64(2**62)
    tmax = np.int64(-(2**62))
    amin = tmin
    amax = tmax
    for j in range(lo, hi):
        r = recs[j]
        if ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) != key:
            continue
        if np.int64(r.ts_recv) < t0:
            continue
        p = r.price
        if p == 2**63 - 1:
            continue
        if r.action == TRADE:
            tmin = min(tmin, p)
            tmax = max(tmax, p)
        elif r.action == 65 or r.action == 77:
            amin = min(amin, p)
            amax = max(amax, p)
    return tmin, tmax, amin, amax


@njit(**_J)
def price_gcd(recs, lo, hi, key, step):
    """GCD of the differences between the book's record prices (Add, Modify, Trade) in
    every ``step``-th record of ``recs[lo:hi]``: the price increment (fixed 1e-9), 0 if
    fewer than two distinct prices."""
    g = np.int64(0)
    ref = np.int64(0)
    have = False
    for j in range(lo, hi, step):
        r = recs[j]
        if r.action != 65 and r.action != 77 and r.action != TRADE:
            continue
        if ((np.int64(r.instrument_id) << 16) | np.int64(r.publisher_id)) != key:
            continue
        p = r.price
        if p == 2**63 - 1:
            continue
        if not have:
            ref = p
            have = True
            continue
        d = p - ref
        if d < 0:
            d = -d
        if d == 0:
            continue
        a, b = g, d
        while b != 0:
            a, b = b, a % b
        g = a
        if g == 1:
            break
    return g


@njit(**_J)
def search_ts(recs, t, right):
    """``np.searchsorted(recs.ts_recv, t, 'right' if right else 'left')`` in place."""
    lo = 0
    hi = recs.shape[0]
    tt = np.uint64(t)
    while lo < hi:
        mid = (lo + hi) >> 1
        v = recs[mid].ts_recv
        if v < tt or (right and v == tt):
            lo = mid + 1
        else:
            hi = mid
    return lo


def books(recs: np.ndarray) -> tuple[dict[tuple[int, int], int], int, int]:
    """({(instrument_id, publisher_id): records}, F_LAST records, first F_LAST index)."""
    cap = 64
    while True:
        hk = np.full(cap, -1, np.int64)
        hc = np.zeros(cap, np.int64)
        n_last, first, _, full = book_table(recs, 0, len(recs), hk, hc)
        if not full:
            break
        cap *= 4
    sel = hk >= 0
    out = {(int(k >> 16), int(k & 0xFFFF)): int(c) for k, c in zip(hk[sel], hc[sel])}
    return dict(sorted(out.items())), int(n_last), int(first)
