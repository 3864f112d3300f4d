"""Shared fixtures: the CME CLX5 sample, a synthetic stream, and a record builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mbo_lab
from mbo_lab.io.records import F_LAST, empty_records

#: ts_recv of the first hand-built record and the step between records (ns).
T0 = 1_700_000_000_000_000_000
STEP = 1_000

#: The default synthetic stream (see the ``synth`` fixture).
SYNTH_RECORDS = 200_000
SYNTH_SNAPSHOT_EVERY = 20_000
SYNTH_SEED = 20251125


def rec(action: str, side: str = "N", price: int = 0, size: int = 0, order_id: int = 0, *,
        flags: int = F_LAST, iid: int = 1, pub: int = 1, **extra: Any) -> dict[str, Any]:
    """One hand-written MBO record as a dict (action/side as one-letter strings).

    ``flags`` defaults to F_LAST so every record publishes a state; ``extra`` sets any
    other MBO field (``ts_recv``, ``sequence``, ...).
    """
    return dict(action=action, side=side, price=price, size=size, order_id=order_id,
                flags=flags, instrument_id=iid, publisher_id=pub, **extra)


def build_records(rows: list[dict[str, Any]]) -> np.ndarray:
    """MBO records (``MBO_DTYPE``) from :func:`rec` dicts.

    Unless given, ``ts_recv = ts_event = T0 + i * STEP`` and ``sequence = i``.
    """
    out = empty_records(len(rows))
    out["ts_recv"] = T0 + np.arange(len(rows), dtype=np.uint64) * STEP
    out["ts_event"] = out["ts_recv"]
    out["sequence"] = np.arange(len(rows), dtype=np.uint32)
    for i, row in enumerate(rows):
        for name, value in row.items():
            if name in ("action", "side"):
                value = value.encode("latin-1") if isinstance(value, str) else value
            out[name][i] = value
    return out


@pytest.fixture(scope="session")
def clx5_path() -> Path:
    """The CME CLX5 MBO sample (``MBO_LAB_DATA_PATH``, default ../shared/data)."""
    path = Path(mbo_lab.get_settings().data_path)
    if not path.is_file():
        pytest.skip(
            f"CLX5 sample not found at {path}: set MBO_LAB_DATA_PATH to the CME CLX5 MBO "
            "file (shared/data/CLX5_mbo.dbn) to run the tests on real data"
        )
    return path


@pytest.fixture(scope="session")
def clx5(clx5_path: Path) -> mbo_lab.MboData:
    return mbo_lab.load(clx5_path)


@pytest.fixture(scope="session")
def warm_numba() -> None:
    """Compile (or load from the cache) every kernel signature once, before the tests of
    a module that uses it (``pytestmark = pytest.mark.usefixtures("warm_numba")``)."""
    mbo_lab.warmup()


@pytest.fixture(scope="session")
def clx5_frames(clx5):
    """``(numba engine, reference engine, kernel frames, reference frames)`` of CLX5 at
    10 levels, each engine after the whole file."""
    from mbo_lab.book.engine import NumbaEngine, ReferenceEngine

    ne, re = NumbaEngine(levels=10), ReferenceEngine(levels=10)
    got, want = ne.apply(clx5.records), re.apply(clx5.records)
    return ne, re, got, want


@pytest.fixture(scope="session")
def gen() -> np.ndarray:
    """60k generated records (read-only): five books, three publishers (one top-of-book
    only), a clear + snapshot every ~15k records."""
    recs = mbo_lab.synth_records(60_000, seed=424242, clear_snapshot_every=15_000,
                                 tob_publisher=True)
    recs.flags.writeable = False
    return recs


@pytest.fixture(scope="session")
def synth() -> np.ndarray:
    """200k synthetic records: five books on three publishers (one top-of-book only),
    with a clear + snapshot every ~20k records."""
    recs = mbo_lab.synth_records(SYNTH_RECORDS, seed=SYNTH_SEED,
                                 clear_snapshot_every=SYNTH_SNAPSHOT_EVERY, tob_publisher=True)
    recs.flags.writeable = False
    return recs


def fail_on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, n: int,
                 exc: BaseException) -> dict[str, int]:
    """Patch method ``owner.name`` so that its ``n``-th call raises ``exc`` (the others
    run the real method): fault injection for "a failure part-way loses nothing" tests.
    Returns the call counter (``{"n": calls so far}``; set it to 0 to start again)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def flaky(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, flaky)
    return calls


def zone_controls(widget) -> list:
    """Every time-zone control in ``widget``'s tree (walking ``children``): a selection
    widget that offers "UTC" among its values or carries a zone control's CSS class."""
    import ipywidgets as W

    out, todo, seen = [], [widget], set()
    while todo:
        w = todo.pop()
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        if isinstance(w, W.widgets.widget_selection._Selection):
            values = [str(v) for v in getattr(w, "_options_values", ())]
            labels = [str(v) for v in getattr(w, "_options_labels", ())]
            classes = set(getattr(w, "_dom_classes", ()))
            if "UTC" in values or any("UTC" in t for t in labels) \
                    or classes & {"mbo-tz", "mbo-map-zone"}:
                out.append(w)
        todo.extend(getattr(w, "children", ()) or ())
    return out
