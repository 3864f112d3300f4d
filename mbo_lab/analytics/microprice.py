"""Stoikov's micro-price (Stoikov 2018, "The micro-price: a high-frequency estimator of
future prices", Quantitative Finance 18(12); SSRN 2970694).

Not the size-weighted mid (:func:`mbo_lab.analytics.weighted_mid`): the micro-price is the
limit of expected future mids, ``P_micro = mid + g*(I, S)``, with the state ``(I, S)``:
``I = Q_b / (Q_b + Q_a)`` (level-1 sizes) cut into ``n_imbalance`` equal-width buckets of
[0, 1] and ``S`` the spread in ticks (1 .. ``n_spread``). From consecutive in-model
F_LAST states of one book (a Markov chain; states outside the model -- crossed, locked,
a side empty, wider spreads, snapshot states -- are skipped, as the reference code does by
filtering before shifting), with ``dM`` the mid change in ticks (kept when
``|dM| <= 1``) and the data symmetrised (``I -> 1 - I``, ``dM -> -dM``)::

    Q[x, y] = P(next state y, dM = 0 | x)       R[x, k] = P(dM = K_k | x)
    T[x, y] = P(next state y, dM != 0 | x)      K = (-1, -0.5, 0.5, 1) ticks
    G1 = (1 - Q)^-1 R K,   B = (1 - Q)^-1 T,   g* = G1 + B G1 + B^2 G1 + ...

``g*`` is in ticks. The sum is iterated until the increment is below ``tol`` ticks (or
``max_iter`` terms; the paper stops at six). States never seen get NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..book.build import Source
from ..book.frames import BookFrames
from ..io.records import F_SNAPSHOT, FIXED_PRICE_SCALE, UNDEF_PRICE, px_to_float
from ._base import AnalyticsError, _book_key, _index, _states

__all__ = ["MicropriceModel", "fit_microprice", "microprice_stoikov"]

_K_HALF_TICKS = np.array([-2, -1, 1, 2])  # mid changes kept, in half ticks


@dataclass
class MicropriceModel:
    """A fitted Stoikov micro-price adjustment for one book.

    Attributes
    ----------
    tick : int
        Tick size, fixed-point (1e-9 units).
    n_imbalance, n_spread : int
        Imbalance buckets and largest spread (ticks) of the model.
    g : numpy.ndarray (n_spread, n_imbalance)
        ``g*(I, S)`` in ticks; row ``s - 1`` is spread ``s``; NaN for unseen states.
    g1 : numpy.ndarray (n_spread, n_imbalance)
        First-order term ``G1`` (expected mid change at the next move), ticks.
    counts : numpy.ndarray (n_spread, n_imbalance)
        Transitions observed from each state before symmetrisation.
    iterations : int
        Terms summed for ``g``; ``converged`` tells whether ``tol`` was reached.
    """

    tick: int
    n_imbalance: int
    n_spread: int
    g: np.ndarray
    g1: np.ndarray
    counts: np.ndarray
    iterations: int = 0
    converged: bool = True
    book: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def tick_size(self) -> float:
        """Tick size in currency units."""
        return self.tick / FIXED_PRICE_SCALE

    def table(self) -> pd.DataFrame:
        """``g*`` in ticks as a DataFrame: rows spread (ticks), columns imbalance bucket
        (left edge of each bucket)."""
        cols = pd.Index(np.arange(self.n_imbalance) / self.n_imbalance, name="imbalance")
        return pd.DataFrame(self.g, index=pd.Index(np.arange(1, self.n_spread + 1),
                                                     name="spread_ticks"), columns=cols)

    def adjustment(self, bid_px: np.ndarray, ask_px: np.ndarray, bid_sz: np.ndarray,
                   ask_sz: np.ndarray) -> np.ndarray:
        """``g*`` in currency units for fixed-point quotes; NaN outside the model."""
        s, i, ok = _state(bid_px, ask_px, bid_sz, ask_sz, self.tick, self.n_imbalance,
                          self.n_spread)
        out = np.full(len(s), np.nan)
        out[ok] = self.g[s[ok] - 1, i[ok]] * self.tick_size
        return out

    def predict(self, bid_px: np.ndarray, ask_px: np.ndarray, bid_sz: np.ndarray,
                ask_sz: np.ndarray) -> np.ndarray:
        """Micro-price (currency units) for fixed-point quotes; NaN outside the model."""
        mid = (px_to_float(np.asarray(bid_px)) + px_to_float(np.asarray(ask_px))) / 2.0
        return mid + self.adjustment(bid_px, ask_px, bid_sz, ask_sz)


def _state(bid_px, ask_px, bid_sz, ask_sz, tick: int, n_imb: int, n_spread: int):
    """(spread ticks, imbalance bucket, in-model mask) of quotes (fixed-point)."""
    bid_px = np.asarray(bid_px, np.int64)
    ask_px = np.asarray(ask_px, np.int64)
    qb = np.asarray(bid_sz, np.float64)
    qa = np.asarray(ask_sz, np.float64)
    defined = (bid_px != UNDEF_PRICE) & (ask_px != UNDEF_PRICE) & (qb > 0) & (qa > 0)
    diff = np.where(defined, ask_px - np.where(defined, bid_px, 0), 0)
    s = np.rint(diff / tick).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        imb = np.where(defined, qb / (qb + qa), 0.5)
    i = np.minimum((imb * n_imb).astype(np.int64), n_imb - 1)
    ok = defined & (s >= 1) & (s <= n_spread)
    return s, i, ok


def _infer_tick(bid: np.ndarray, ask: np.ndarray) -> int:
    d = ask - bid
    d = d[d > 0]
    if not len(d):
        raise AnalyticsError("no state with a positive spread: pass tick=")
    return int(d.min())


def _fit_arrays(bid, ask, bsz, asz, snap, n_imb: int, n_spread: int, tick: int | None,
                tol: float, max_iter: int) -> MicropriceModel:
    defined = (bid != UNDEF_PRICE) & (ask != UNDEF_PRICE)
    if tick is None:
        tick = _infer_tick(bid[defined], ask[defined])
    s, i, ok = _state(bid, ask, bsz, asz, tick, n_imb, n_spread)
    ok &= ~snap
    rows = np.flatnonzero(ok)
    if len(rows) < 2:
        raise AnalyticsError("fewer than two in-model states: nothing to estimate")
    s, i = s[rows], i[rows]
    m2 = np.rint((bid[rows].astype(np.float64) + ask[rows]) / tick).astype(np.int64)
    x = (s[:-1] - 1) * n_imb + i[:-1]
    y = (s[1:] - 1) * n_imb + i[1:]
    dm = m2[1:] - m2[:-1]
    keep = np.abs(dm) <= 2
    x, y, dm = x[keep], y[keep], dm[keep]
    ns = n_imb * n_spread
    counts = np.bincount(x, minlength=ns).reshape(n_spread, n_imb).astype(np.int64)

    def mirror(v):
        sp, ib = np.divmod(v, n_imb)
        return sp * n_imb + (n_imb - 1 - ib)

    xs = np.concatenate([x, mirror(x)])
    ys = np.concatenate([y, mirror(y)])
    ds = np.concatenate([dm, -dm])
    q = np.zeros((ns, ns))
    t = np.zeros((ns, ns))
    r = np.zeros((ns, 4))
    move = ds != 0
    np.add.at(q, (xs[~move], ys[~move]), 1.0)
    np.add.at(t, (xs[move], ys[move]), 1.0)
    np.add.at(r, (xs[move], np.searchsorted(_K_HALF_TICKS, ds[move])), 1.0)
    tot = q.sum(1) + r.sum(1)
    seen = tot > 0
    norm = np.where(seen, tot, 1.0)[:, None]
    q, t, r = q / norm, t / norm, r / norm
    inv = np.linalg.pinv(np.eye(ns) - q)
    g1 = inv @ r @ (_K_HALF_TICKS / 2.0)
    b = inv @ t
    g = g1.copy()
    term = g1.copy()
    it, converged = 1, False
    while it < max_iter:
        term = b @ term
        g += term
        it += 1
        if np.nanmax(np.abs(term)) < tol:
            converged = True
            break
    g[~seen] = np.nan
    g1 = np.where(seen, g1, np.nan)
    return MicropriceModel(int(tick), n_imb, n_spread, g.reshape(n_spread, n_imb),
                           g1.reshape(n_spread, n_imb), counts, it, converged)


def fit_microprice(source: Source, *, instrument_id: int | None = None,
                   publisher_id: int | None = None, n_imbalance: int = 10,
                   n_spread: int = 2, tick: float | None = None, tol: float = 1e-10,
                   max_iter: int = 200, frames: BookFrames | None = None,
                   engine: str | None = None) -> MicropriceModel:
    """Estimate Stoikov's micro-price adjustment ``g*(I, S)`` for one book.

    ``tick`` is the tick size in currency units (default: the smallest positive spread
    seen). The source must hold one book, or ``instrument_id``/``publisher_id`` must pick
    one.

    >>> m = fit_microprice(mbo_lab.demo_path(), instrument_id=1001, publisher_id=1)  # doctest: +SKIP
    >>> m.table()                                                                    # doctest: +SKIP
    """
    _, fr, rec = _states(source, 1, frames, engine, instrument_id, publisher_id)
    keys = np.unique(_book_key(rec))
    if len(keys) != 1:
        books = [(int(k >> 16), int(k & 0xFFFF)) for k in keys]
        raise AnalyticsError(
            f"fit_microprice needs one book; the selection holds {books or 'none'}: pass "
            "instrument_id= and publisher_id="
        )
    tick_fixed = None if tick is None else int(round(tick * FIXED_PRICE_SCALE))
    model = _fit_arrays(fr.bid_px[:, 0], fr.ask_px[:, 0], fr.bid_sz[:, 0], fr.ask_sz[:, 0],
                        (rec["flags"] & F_SNAPSHOT) != 0, n_imbalance, n_spread, tick_fixed,
                        tol, max_iter)
    model.book = (int(keys[0] >> 16), int(keys[0] & 0xFFFF))
    return model


def microprice_stoikov(source: Source, *, instrument_id: int | None = None,
                       publisher_id: int | None = None, n_imbalance: int = 10,
                       n_spread: int = 2, tick: float | None = None,
                       model: MicropriceModel | None = None, frames: BookFrames | None = None,
                       engine: str | None = None) -> pd.Series:
    """Stoikov micro-price (currency units) at every F_LAST state.

    Without ``model`` a model is fitted per book on the same data (in-sample) with
    :func:`fit_microprice`'s parameters; the models are in ``series.attrs["models"]``
    (``{(instrument_id, publisher_id): MicropriceModel}``). NaN when crossed, locked, a side
    is empty, the spread is wider than ``n_spread`` ticks or the state was never seen.

    >>> microprice_stoikov(mbo_lab.demo_path(), instrument_id=1001).dropna().head()  # doctest: +SKIP
    """
    _, fr, rec = _states(source, 1, frames, engine, instrument_id, publisher_id)
    out = np.full(len(fr), np.nan)
    keys = _book_key(rec)
    models: dict[tuple[int, int], MicropriceModel] = {}
    snap = (rec["flags"] & F_SNAPSHOT) != 0
    tick_fixed = None if tick is None else int(round(tick * FIXED_PRICE_SCALE))
    for k in np.unique(keys):
        rows = np.flatnonzero(keys == k)
        book = (int(k >> 16), int(k & 0xFFFF))
        args = (fr.bid_px[rows, 0], fr.ask_px[rows, 0], fr.bid_sz[rows, 0],
                fr.ask_sz[rows, 0])
        if model is None:
            try:
                m = _fit_arrays(*args, snap[rows], n_imbalance, n_spread, tick_fixed, 1e-10,
                                200)
            except AnalyticsError:
                continue  # too little data for this book: NaN
            m.book = book
        else:
            m = model
        models[book] = m
        val = m.predict(*args)
        val[snap[rows]] = np.nan
        out[rows] = val
    s = pd.Series(out, index=_index(rec), name="microprice_stoikov")
    s.attrs["models"] = models
    return s
