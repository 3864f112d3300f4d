"""DBN loading and writing (mbo_lab.io.dbn), bad input, and the book API on CLX5.

CLX5 facts asserted here are documented in shared/docs/domain.md (§1.2, §1.5, §1.7, §2):
38,212 records of GLBX.MDP3 MBO for CLX5 (instrument 432669), DBN version 3 with a
360-byte prelude, actions A 14,959 / C 16,252 / M 2,701 / T 1,599 / F 2,701, 32,053
F_LAST states of which 172 crossed and 0 locked.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import databento
import databento_dbn
import numpy as np
import pandas as pd
import pytest
import zstandard

import mbo_lab
from mbo_lab import (
    DataError,
    MboData,
    NotDbnError,
    TruncatedFileError,
    UnsupportedVersionError,
    WrongSchemaError,
)
from mbo_lab.book.engine import NumbaEngine
from mbo_lab.book.frames import BookFrames
from mbo_lab.errors import EngineError
from mbo_lab.io.dbn import DbnMetadata, DbnWriter, iter_chunks, load, write_dbn
from mbo_lab.io.records import F_LAST, FIXED_PRICE_SCALE, MBO_DTYPE, RTYPE_MBO, UNDEF_PRICE

UNDEF = int(UNDEF_PRICE)
CLX5_RECORDS = 38_212
CLX5_INSTRUMENT = 432_669
CLX5_PRELUDE = 360
CLX5_ACTIONS = {"A": 14_959, "C": 16_252, "M": 2_701, "T": 1_599, "F": 2_701}
CLX5_F_LAST = 32_053
CLX5_CROSSED = 172
CLX5_UNKNOWN_CANCEL = 1_224
CLX5_UNKNOWN_MODIFY = 216


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def clx5_raw(clx5_path) -> bytes:
    return Path(clx5_path).read_bytes()


@pytest.fixture(scope="session")
def synth_file(tmp_path_factory) -> Path:
    """A small synthetic DBN file with clears (UNDEF prices) and symbol mappings."""
    path = tmp_path_factory.mktemp("synth") / "synth.dbn"
    return mbo_lab.write_synth(path, 20_000, seed=3, clear_snapshot_every=4_000,
                               progress=False)


# --------------------------------------------------------------------------- CLX5


def test_load_clx5(clx5, clx5_path):
    assert len(clx5) == CLX5_RECORDS
    assert clx5.records.dtype == MBO_DTYPE
    m = clx5.metadata
    assert (m.schema, m.dataset, m.version, m.compressed) == ("mbo", "GLBX.MDP3", 3, False)
    assert m.path == str(clx5_path) == clx5.path
    assert m.symbols == ["CLX5"]
    assert clx5.symbols == {CLX5_INSTRUMENT: "CLX5"}
    assert m.stype_in == "raw_symbol" and m.stype_out == "instrument_id"
    assert set(clx5.records["instrument_id"].tolist()) == {CLX5_INSTRUMENT}
    assert (clx5.records["rtype"] == RTYPE_MBO).all()
    assert (clx5.records["length"] == 14).all()
    assert clx5.summary()["actions"] == CLX5_ACTIONS
    assert int(np.count_nonzero(clx5.records["flags"] & F_LAST)) == CLX5_F_LAST
    assert clx5.first_index == 0
    assert clx5.start_ns == int(clx5.records["ts_recv"][0])
    assert clx5.end_ns == int(clx5.records["ts_recv"][-1])
    assert m.start <= clx5.start_ns and clx5.end_ns < m.end


def test_load_clx5_matches_file_bytes_and_databento(clx5, clx5_path, clx5_raw):
    assert clx5_raw[:4] == b"DBN\x03"
    assert 8 + struct.unpack("<I", clx5_raw[4:8])[0] == CLX5_PRELUDE
    assert clx5.records.tobytes() == clx5_raw[CLX5_PRELUDE:]
    theirs = databento.DBNStore.from_file(clx5_path).to_ndarray()
    assert theirs.tobytes() == clx5.records.tobytes()


def test_load_accepts_str_and_path(clx5_path, clx5):
    assert len(load(str(clx5_path))) == len(load(Path(clx5_path))) == len(clx5)


def test_slicing_keeps_first_index(clx5):
    part = clx5[100:200]
    assert isinstance(part, MboData) and len(part) == 100
    assert part.first_index == 100 and part.metadata is clx5.metadata
    inner = part[10:20]
    assert inner.first_index == 110
    assert inner.records.tobytes() == clx5.records[110:120].tobytes()
    tail = clx5[-10:]
    assert tail.first_index == CLX5_RECORDS - 10 and len(tail) == 10
    assert clx5[:].first_index == 0 and len(clx5[:]) == CLX5_RECORDS
    empty = clx5[500:400]
    assert len(empty) == 0 and empty.first_index == 500
    assert empty.start_ns is None and empty.end_ns is None
    with pytest.raises(TypeError, match="slice"):
        clx5[5]
    with pytest.raises(ValueError, match="contiguous"):
        clx5[::2]


def test_between_time_slicing(clx5):
    ts = clx5.records["ts_recv"].astype(np.int64)
    assert (np.diff(ts) >= 0).all()
    lo, hi = int(ts[1000]), int(ts[30000])
    part = clx5.between(lo, hi)
    want = np.flatnonzero((ts >= lo) & (ts < hi))
    assert part.first_index == want[0] and len(part) == len(want)
    assert part.records.tobytes() == clx5.records[want[0]: want[-1] + 1].tobytes()
    # timestamps: aware, naive (taken as UTC) and strings give the same slice
    t_lo = pd.Timestamp(lo, unit="ns", tz="UTC")
    t_hi = pd.Timestamp(hi, unit="ns", tz="UTC")
    for a, b in ((t_lo, t_hi), (t_lo.tz_localize(None), t_hi.tz_localize(None)),
                 (str(t_lo), str(t_hi)), (t_lo.tz_convert("America/Chicago"), t_hi)):
        other = clx5.between(a, b)
        assert (other.first_index, len(other)) == (part.first_index, len(part))
    assert len(clx5.between()) == CLX5_RECORDS
    assert clx5.between(start=hi).first_index == int(np.searchsorted(ts, hi))
    assert len(clx5.between(end=lo)) == int(np.count_nonzero(ts < lo))
    assert len(clx5.between(hi, lo)) == 0
    sub = clx5[2000:9000].between(lo, hi)  # a slice of a slice keeps file indices
    assert sub.first_index == max(2000, int(want[0]))
    from mbo_lab.errors import ArgumentError

    for bad in ("not a date", object(), "NaT"):
        with pytest.raises(ArgumentError, match="not a time"):
            clx5.between(bad)


def test_to_df(clx5):
    part = clx5[:5000]
    df = part.to_df()
    r = part.records
    assert len(df) == 5000
    assert df.index.name == "ts_recv"
    assert str(df.index.dtype) == "datetime64[ns, UTC]"
    assert (df.index.asi8 == r["ts_recv"].astype(np.int64)).all()
    assert str(df["ts_event"].dtype) == "datetime64[ns, UTC]"
    assert (df["ts_event"].astype("int64").to_numpy() == r["ts_event"].astype(np.int64)).all()
    assert np.array_equal(df["price"].to_numpy(), r["price"] / FIXED_PRICE_SCALE)
    assert (df["symbol"] == "CLX5").all()
    assert set(df["action"].astype(str)) <= set("ACMTF")
    assert (df["action"].astype(str).to_numpy() == r["action"].astype("U1")).all()
    assert (df["side"].astype(str).to_numpy() == r["side"].astype("U1")).all()
    for col in ("size", "order_id", "flags", "sequence", "publisher_id", "instrument_id"):
        assert (df[col].to_numpy() == r[col]).all(), col
    fixed = part.to_df(price_type="fixed")
    assert fixed["price"].dtype == np.int64 and (fixed["price"].to_numpy() == r["price"]).all()
    with pytest.raises(ValueError, match="price_type"):
        part.to_df(price_type="decimal")


def test_to_df_nan_for_undef_price(synth_file):
    data = load(synth_file)
    undef = data.records["price"] == UNDEF
    assert undef.any()  # the clears carry UNDEF_PRICE
    df = data.to_df()
    assert df["price"].isna().to_numpy().tolist() == undef.tolist()
    assert df["symbol"].isin({"CLG5", "ESH5", "SYNQ"}).all()
    assert (data.to_df(price_type="fixed")["price"].to_numpy()[undef] == UNDEF).all()


def test_repr_and_html(clx5, tmp_path):
    text = repr(clx5)
    for part in ("CLX5_mbo.dbn", "38,212 records", "GLBX.MDP3", "CLX5"):
        assert part in text
    html = clx5._repr_html_()
    assert html.startswith("<b>MboData</b><table>") and html.endswith("</table>")
    assert "38212" in html and "GLBX.MDP3" in html
    weird = write_dbn(tmp_path / "a<b>&c.dbn", clx5.records[:10], dataset="X<Y>")
    html = load(weird)._repr_html_()
    assert "a&lt;b&gt;&amp;c.dbn" in html and "X&lt;Y&gt;" in html and "<b>&" not in html
    assert "empty" in repr(clx5[0:0])


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("suffix", [".dbn", ".dbn.zst"])
def test_write_round_trip(clx5, tmp_path, version, suffix):
    path = write_dbn(tmp_path / f"clx5_v{version}{suffix}", clx5.records,
                     dataset="GLBX.MDP3", symbols=clx5.symbols, version=version)
    assert path.is_file() and not list(tmp_path.glob("*.part"))
    raw = path.read_bytes()
    compressed = suffix.endswith(".zst")
    assert raw[:4] == (b"\x28\xb5\x2f\xfd" if compressed else b"DBN" + bytes([version]))
    back = load(path)
    assert back.records.tobytes() == clx5.records.tobytes()
    m = back.metadata
    assert (m.version, m.compressed, m.schema, m.dataset) == (version, compressed, "mbo",
                                                              "GLBX.MDP3")
    assert m.symbols == ["CLX5"] and back.symbols == {CLX5_INSTRUMENT: "CLX5"}
    assert m.start == int(clx5.records["ts_recv"][0])
    assert m.end > int(clx5.records["ts_recv"][-1])
    theirs = databento.DBNStore.from_file(path)
    assert theirs.to_ndarray().tobytes() == clx5.records.tobytes()
    assert theirs.symbols == ["CLX5"] and theirs.dataset == "GLBX.MDP3"


def test_writer_in_chunks_equals_one_shot(clx5, tmp_path):
    one = write_dbn(tmp_path / "one.dbn", clx5.records, symbols=clx5.symbols)
    start, end = int(clx5.records["ts_recv"][0]), int(clx5.records["ts_recv"][-1]) + 1
    with DbnWriter(tmp_path / "chunks.dbn", start=start, end=end, symbols=clx5.symbols) as w:
        for lo in range(0, len(clx5), 5_000):
            w.write(clx5.records[lo: lo + 5_000])
        w.write(clx5.records[:0])
    assert w.records_written == CLX5_RECORDS
    assert (tmp_path / "chunks.dbn").read_bytes() == one.read_bytes()


def test_writer_abort_leaves_nothing(clx5, tmp_path):
    path = tmp_path / "never.dbn.zst"
    with pytest.raises(RuntimeError), DbnWriter(path) as w:
        w.write(clx5.records[:100])
        raise RuntimeError("stop")
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(UnsupportedVersionError, match="version 4"):
        DbnWriter(tmp_path / "v4.dbn", version=4)
    with DbnWriter(tmp_path / "bad.dbn") as w, pytest.raises(DataError, match="56-byte"):
        w.write(np.zeros(3, np.int64))


def test_write_empty(tmp_path):
    path = write_dbn(tmp_path / "empty.dbn", np.zeros(0, MBO_DTYPE))
    data = load(path)
    assert len(data) == 0 and data.metadata.schema == "mbo"


# --------------------------------------------------------------------------- iter_chunks


@pytest.fixture(scope="module")
def clx5_zst(clx5, tmp_path_factory) -> Path:
    return write_dbn(tmp_path_factory.mktemp("zst") / "clx5.dbn.zst", clx5.records,
                     dataset="GLBX.MDP3", symbols=clx5.symbols)


@pytest.mark.parametrize("chunk", [1_000, 7_777, CLX5_RECORDS, 1 << 20])
@pytest.mark.parametrize("compressed", [False, True])
def test_iter_chunks_equals_load(clx5, clx5_path, clx5_zst, chunk, compressed):
    path = clx5_zst if compressed else clx5_path
    chunks = list(iter_chunks(path, chunk))
    assert len(chunks) == -(-CLX5_RECORDS // chunk)
    assert all(len(c) == chunk for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk
    assert [c.first_index for c in chunks] == list(range(0, CLX5_RECORDS, chunk))
    joined = np.concatenate([c.records for c in chunks])
    assert joined.dtype == MBO_DTYPE
    assert joined.tobytes() == clx5.records.tobytes()
    assert all(c.symbols == {CLX5_INSTRUMENT: "CLX5"} for c in chunks)
    assert chunks[0].metadata.compressed is compressed


@pytest.mark.parametrize("suffix", [".dbn", ".dbn.zst"])
def test_iter_chunks_of_one_record(clx5, tmp_path, suffix):
    path = write_dbn(tmp_path / f"small{suffix}", clx5.records[:300])
    chunks = list(iter_chunks(path, 1))
    assert [c.first_index for c in chunks] == list(range(300))
    assert b"".join(c.records.tobytes() for c in chunks) == clx5.records[:300].tobytes()
    with pytest.raises(ValueError, match="chunk_records"):
        list(iter_chunks(path, 0))


# --------------------------------------------------------------------------- bad input


def readers(path: Path):
    """load() and iter_chunks() of ``path`` as callables."""
    return [("load", lambda **kw: load(path, **kw)),
            ("iter_chunks", lambda **kw: list(iter_chunks(path, 5_000, **kw)))]


@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_missing_file(tmp_path, how):
    path = tmp_path / "nope" / "missing.dbn"
    fn = dict(readers(path))[how]
    with pytest.raises(DataError) as err:
        fn()
    msg = str(err.value)
    assert str(path) in msg and "not found" in msg and "demo_path" in msg
    with pytest.raises(DataError):
        dict(readers(tmp_path))[how]()  # a folder is not a file


@pytest.mark.parametrize("content", [
    pytest.param(b"instrument,price\n432669,64.85\n" * 20, id="text"),
    pytest.param(np.random.default_rng(7).bytes(4096), id="random"),
    pytest.param(b"", id="empty"),
    pytest.param(b"DB", id="short"),
])
@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_not_dbn(tmp_path, content, how):
    path = write(tmp_path / "file.dbn", content)
    with pytest.raises(NotDbnError) as err:
        dict(readers(path))[how]()
    msg = str(err.value)
    assert str(path) in msg and "not a DBN file" in msg and ".dbn" in msg


def trades_file(clx5, tmp_path, compressed: bool, schema=databento_dbn.Schema.TRADES):
    meta = databento_dbn.Metadata(
        dataset="GLBX.MDP3", schema=schema, start=0, end=None,
        stype_in=databento_dbn.SType.RAW_SYMBOL, stype_out=databento_dbn.SType.INSTRUMENT_ID,
        symbols=["CLX5"], partial=[], not_found=[], mappings=[], version=3,
    )
    data = bytes(meta.encode()) + clx5.records[:100].tobytes()
    name = "trades.dbn.zst" if compressed else "trades.dbn"
    return write(tmp_path / name, zst(data) if compressed else data)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_wrong_schema(clx5, tmp_path, compressed, how):
    path = trades_file(clx5, tmp_path, compressed)
    with pytest.raises(WrongSchemaError) as err:
        dict(readers(path))[how]()
    msg = str(err.value)
    assert str(path) in msg and "'trades'" in msg and "schema='mbo'" in msg


def test_mixed_schema_metadata(clx5, tmp_path):
    path = trades_file(clx5, tmp_path, False, schema=None)
    with pytest.raises(WrongSchemaError, match="several schemas"):
        load(path)


@pytest.mark.parametrize("which", [0, -1])
def test_non_mbo_record_in_mbo_file(clx5, tmp_path, which):
    recs = clx5.records[:50].copy()
    recs["rtype"][which] = 0x01
    path = write_dbn(tmp_path / "mixed.dbn", recs)
    with pytest.raises(WrongSchemaError) as err:
        load(path)
    assert str(path) in str(err.value) and "rtype 0x01" in str(err.value)


@pytest.mark.parametrize("suffix", [".dbn", ".dbn.zst"])
def test_non_mbo_record_index_is_file_wide_in_chunks(clx5, tmp_path, suffix):
    recs = clx5.records[:50].copy()
    recs["rtype"][49] = 0x01
    path = write_dbn(tmp_path / f"mixed{suffix}", recs)
    with pytest.raises(WrongSchemaError) as err:
        list(iter_chunks(path, 20))
    assert "record 49 has rtype 0x01" in str(err.value)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_truncated_mid_record(clx5_raw, tmp_path, compressed, how, caplog):
    n, extra = 12_345, 20
    cut = clx5_raw[: CLX5_PRELUDE + n * 56 + extra]
    path = write(tmp_path / ("cut.dbn.zst" if compressed else "cut.dbn"),
                 zst(cut) if compressed else cut)
    fn = dict(readers(path))[how]
    with pytest.raises(TruncatedFileError) as err:
        fn()
    e = err.value
    assert isinstance(e, DataError)
    assert e.records_read == n
    assert e.byte_offset == CLX5_PRELUDE + n * 56
    msg = str(e)
    assert str(path) in msg and "12,345 whole records" in msg and "allow_truncated=True" in msg
    assert f"byte offset {CLX5_PRELUDE + n * 56:,}" in msg
    with caplog.at_level(logging.WARNING, logger="mbo_lab"):
        got = fn(allow_truncated=True)
    recs = got.records if how == "load" else np.concatenate([c.records for c in got])
    assert recs.tobytes() == clx5_raw[CLX5_PRELUDE: CLX5_PRELUDE + n * 56]
    assert "truncated" in caplog.text


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_truncated_inside_metadata(clx5_raw, tmp_path, compressed, how):
    cut = clx5_raw[:100]
    path = write(tmp_path / ("meta.dbn.zst" if compressed else "meta.dbn"),
                 zst(cut) if compressed else cut)
    with pytest.raises(TruncatedFileError) as err:
        dict(readers(path))[how]()
    assert str(path) in str(err.value) and "metadata" in str(err.value)
    assert "download it again" in str(err.value)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_unsupported_version(clx5_raw, tmp_path, compressed, how):
    raw = bytearray(clx5_raw)
    raw[3] = 9
    path = write(tmp_path / ("v9.dbn.zst" if compressed else "v9.dbn"),
                 zst(bytes(raw)) if compressed else bytes(raw))
    with pytest.raises(UnsupportedVersionError) as err:
        dict(readers(path))[how]()
    msg = str(err.value)
    assert str(path) in msg and "version 9" in msg and "1-3" in msg and "dbn" in msg


@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_corrupt_zstd(tmp_path, how):
    junk = b"\x28\xb5\x2f\xfd" + np.random.default_rng(3).bytes(500)
    path = write(tmp_path / "corrupt.dbn.zst", junk)
    with pytest.raises(NotDbnError) as err:
        dict(readers(path))[how]()
    assert str(path) in str(err.value) and "download it again" in str(err.value)


@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_corrupt_zstd_after_valid_start(clx5_raw, tmp_path, how):
    """Damage in the middle of a checksummed frame: the first chunks decode, then the
    reader must fail with the package's error (zstd without a checksum cannot tell)."""
    comp = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(clx5_raw))
    mid = len(comp) // 2
    comp[mid: mid + 64] = bytes(b ^ 0x5A for b in comp[mid: mid + 64])
    path = write(tmp_path / "damaged.dbn.zst", bytes(comp))
    with pytest.raises(DataError) as err:
        dict(readers(path))[how]()
    assert str(path) in str(err.value)


def test_mbo_data_rejects_other_arrays():
    with pytest.raises(DataError, match="MBO"):
        MboData(np.zeros(3, np.int64))
    same_layout = np.zeros(2, dtype=[("x", "V56")])
    assert MboData(same_layout).records.dtype == MBO_DTYPE
    assert MboData(np.zeros(0, MBO_DTYPE)).metadata == DbnMetadata()


# --------------------------------------------------------------------------- book API


def level_cols(levels: int) -> list[str]:
    return [f"{side}_{what}_{k:02d}" for k in range(levels) for what in ("px", "sz", "ct")
            for side in ("bid", "ask")]


@pytest.fixture(scope="module")
def clx5_mbp3(clx5):
    return mbo_lab.mbp(clx5, levels=3)


def test_mbp_columns_and_empty_levels(clx5, clx5_mbp3):
    df = clx5_mbp3
    assert len(df) == CLX5_F_LAST
    assert [c for c in df.columns if c[-3:-2] == "_" and c[-2:].isdigit()] == level_cols(3)
    for col in ("ts_event", "instrument_id", "publisher_id", "sequence", "record_index",
                "symbol", "crossed", "locked"):
        assert col in df.columns, col
    assert df.index.name == "ts_recv" and str(df.index.dtype) == "datetime64[ns, UTC]"
    assert (df["symbol"] == "CLX5").all()
    idx = np.flatnonzero(clx5.records["flags"] & F_LAST)
    assert df["record_index"].tolist() == idx.tolist()
    assert (df.index.asi8 == clx5.records["ts_recv"][idx].astype(np.int64)).all()
    assert int(df["crossed"].sum()) == CLX5_CROSSED and int(df["locked"].sum()) == 0
    assert df.attrs["counters"]["unknown_cancel"] == CLX5_UNKNOWN_CANCEL
    assert df.attrs["counters"]["unknown_modify"] == CLX5_UNKNOWN_MODIFY
    empty_seen = False
    for k in range(3):
        for side in ("bid", "ask"):
            px, sz, ct = (df[f"{side}_{w}_{k:02d}"].to_numpy() for w in ("px", "sz", "ct"))
            empty = np.isnan(px)
            empty_seen |= bool(empty.any())
            assert (sz[empty] == 0).all() and (ct[empty] == 0).all()
            assert (sz[~empty] > 0).all() and (ct[~empty] > 0).all()
    assert empty_seen  # the mid-session start leaves sides empty at first
    fixed = mbo_lab.mbp(clx5, levels=3, price_type="fixed")
    for c in [c for c in df.columns if "_px_" in c]:
        f = fixed[c].to_numpy()
        assert f.dtype == np.int64
        assert np.array_equal(np.isnan(df[c].to_numpy()), f == UNDEF)
        ok = f != UNDEF
        assert np.array_equal(df[c].to_numpy()[ok], f[ok] / FIXED_PRICE_SCALE)


def test_mbp_crossed_flags_match_prices(clx5_mbp3):
    df = clx5_mbp3
    both = df["bid_px_00"].notna() & df["ask_px_00"].notna()
    assert (df["crossed"] == (both & (df["bid_px_00"] > df["ask_px_00"]))).all()
    assert (df["locked"] == (both & (df["bid_px_00"] == df["ask_px_00"]))).all()


def test_bbo_is_first_level_of_mbp(clx5, clx5_mbp3):
    b = mbo_lab.bbo(clx5)
    assert [c for c in b.columns if c.endswith("_00")] == level_cols(1)
    assert not any(c.endswith("_01") for c in b.columns)
    pd.testing.assert_frame_equal(b, clx5_mbp3[list(b.columns)])


def test_mbp_sources_agree(clx5, clx5_path, clx5_mbp3):
    from_path = mbo_lab.mbp(clx5_path, levels=3)
    pd.testing.assert_frame_equal(from_path, clx5_mbp3)
    chunked = mbo_lab.mbp(clx5, levels=3, chunk_records=997)
    pd.testing.assert_frame_equal(chunked, clx5_mbp3)
    assert chunked.attrs["counters"] == clx5_mbp3.attrs["counters"]
    with pytest.raises(EngineError, match="MBO data"):
        mbo_lab.mbp(12345)


@pytest.mark.parametrize("lo, hi", [(0, 6_000), (20_000, 26_000)])
def test_reference_engine_equals_default_on_a_slice(clx5, lo, hi):
    part = clx5[lo:hi]
    ref = mbo_lab.mbp(part, levels=5, engine="reference")
    default = mbo_lab.mbp(part, levels=5)
    pd.testing.assert_frame_equal(ref, default)
    assert ref.attrs["counters"] == default.attrs["counters"]


# --------------------------------------------------------------------------- invariants


def assert_frames_invariants(f: BookFrames) -> None:
    assert (np.diff(f.index) > 0).all()
    for px, sz, ct, sign in ((f.bid_px, f.bid_sz, f.bid_ct, -1),
                             (f.ask_px, f.ask_sz, f.ask_ct, 1)):
        defined = px != UNDEF
        assert (sz >= 0).all() and (ct >= 0).all()
        assert (sz[defined] > 0).all()  # non-empty level => positive size
        assert (sz[~defined] == 0).all() and (ct[~defined] == 0).all()
        assert (defined[:, 1:] <= defined[:, :-1]).all()  # levels packed from the top
        both = defined[:, 1:] & defined[:, :-1]
        step = np.sign(px[:, 1:] - px[:, :-1])  # CLX5 prices are far from int64 limits
        assert (step[both] == sign).all()  # bids strictly descending, asks ascending
    both = (f.bid_px[:, 0] != UNDEF) & (f.ask_px[:, 0] != UNDEF)
    expect = np.where(both & (f.bid_px[:, 0] > f.ask_px[:, 0]), 2,
                      np.where(both & (f.bid_px[:, 0] == f.ask_px[:, 0]), 1, 0))
    assert np.array_equal(f.cross, expect)


def test_clx5_invariants_chunk_wise(clx5):
    eng = NumbaEngine(levels=10)
    parts = []
    for lo in range(0, len(clx5), 3_000):
        parts.append(eng.apply(clx5.records[lo: lo + 3_000], base_index=lo))
        assert eng.check() == 0, f"kernel invariants broken after record {lo + 3_000}"
        assert eng.state.live_orders >= 0
    frames = BookFrames.concat(parts, 10)
    assert len(frames) == CLX5_F_LAST
    assert_frames_invariants(frames)
    # CLX5 has no top-of-book records: every level holds at least one order
    assert (frames.bid_ct[frames.bid_px != UNDEF] > 0).all()
    assert (frames.ask_ct[frames.ask_px != UNDEF] > 0).all()
    assert int(np.count_nonzero(frames.cross == 2)) == CLX5_CROSSED


# --------------------------------------------------------------------------- integrity (#12)

from mbo_lab.errors import (  # noqa: E402
    CorruptFileError,
    FileChangedError,
    InputPathError,
    MboLabError,
)
from mbo_lab.io.dbn import _ZstdBlocks, check_input_path  # noqa: E402


@pytest.fixture(scope="module")
def small_zst(tmp_path_factory) -> tuple[Path, bytes, bytes]:
    """(path, compressed bytes, decompressed bytes) of a generated 20k-record .dbn.zst."""
    path = tmp_path_factory.mktemp("small") / "s.dbn.zst"
    mbo_lab.write_synth(path, 20_000, seed=3, progress=False)
    comp = path.read_bytes()
    return path, comp, zstandard.ZstdDecompressor().decompressobj().decompress(comp)


def block_ends(comp: bytes) -> list[int]:
    """Compressed offsets where each frame header, block and checksum of ``comp`` ends."""
    import io

    z = _ZstdBlocks(io.BytesIO(comp), "<test>")
    ends: list[int] = []
    take = z._take

    def spy(n):
        out = take(n)
        ends.append(z.offset)
        return out

    z._take = spy
    for _ in z.pieces():
        pass
    assert z.truncated is None and z.frames == 1
    return ends


def decoded_length(prefix: bytes) -> int:
    """Bytes the zstd library itself decodes from a cut file (the oracle); -1 on error."""
    try:
        return len(zstandard.ZstdDecompressor().decompressobj().decompress(prefix))
    except zstandard.ZstdError:
        return -1


def test_truncated_zst_at_every_block_boundary_and_sampled_offsets(small_zst, tmp_path):
    path, comp, plain = small_zst
    prelude = 8 + struct.unpack("<I", plain[4:8])[0]
    n_all = (len(plain) - prelude) // 56
    ends = block_ends(comp)
    assert ends[-1] == len(comp) and len(ends) >= 8
    rng = np.random.default_rng(12)
    cuts = sorted(set(ends[:-1]) | set(rng.integers(1, len(comp), 40).tolist()))
    aligned = 0
    for cut in cuts:
        p = write(tmp_path / "cut.dbn.zst", comp[:cut])
        out_len = decoded_length(comp[:cut])
        assert out_len >= 0
        if out_len < prelude:  # cut inside the DBN header: nothing to keep
            for _how, fn in readers(p):
                for kw in ({}, {"allow_truncated": True}):
                    with pytest.raises(TruncatedFileError, match="header"):
                        fn(**kw)
            continue
        want = (out_len - prelude) // 56
        aligned += (out_len - prelude) % 56 == 0
        for how, fn in readers(p):
            with pytest.raises(TruncatedFileError) as err:
                fn()
            e = err.value
            assert e.records_read == want, (cut, how)
            assert e.byte_offset == prelude + want * 56
            assert str(p) in str(e) and "allow_truncated=True" in str(e), (cut, how)
            assert f"{want:,} whole records" in str(e)
            kept = fn(allow_truncated=True)
            if how == "load":
                recs, flag = kept.records, kept.truncated
            else:
                recs = np.concatenate([c.records for c in kept])
                flag = kept[-1].truncated
                assert all(not c.truncated for c in kept[:-1])
            assert flag is True and len(recs) == want
            assert recs.tobytes() == plain[prelude: prelude + want * 56]
            assert want < n_all or cut >= ends[-2]  # only the checksum can be missing
    assert aligned >= 3  # record-aligned cuts (the silent case of issue #12) were tried
    full = load(path)
    assert len(full) == n_all and full.truncated is False


def test_issue_example_cut_is_reported(tmp_path):
    path = mbo_lab.write_synth(tmp_path / "s.dbn.zst", 20_000, seed=3, progress=False)
    comp = path.read_bytes()
    cut = write(tmp_path / "cut.dbn.zst", comp[: len(comp) * 7 // 10])
    with pytest.raises(TruncatedFileError, match="frame did not end|incomplete record"):
        load(cut)
    with pytest.raises(TruncatedFileError):
        mbo_lab.mbp(cut, levels=1)  # built on iter_chunks


def test_written_zst_carry_checksums(clx5, tmp_path):
    paths = [write_dbn(tmp_path / "w.dbn.zst", clx5.records[:2000]),
             mbo_lab.write_synth(tmp_path / "s.dbn.zst", 3000, seed=1, progress=False)]
    with DbnWriter(tmp_path / "d.dbn.zst") as w:
        w.write(clx5.records[:10])
    paths.append(tmp_path / "d.dbn.zst")
    for p in paths:
        head = p.read_bytes()[:5]
        assert head[:4] == b"\x28\xb5\x2f\xfd" and head[4] & 0x04, p  # Content_Checksum_flag


def test_bit_flips_in_checksummed_zst_raise_package_errors(clx5, tmp_path):
    src = write_dbn(tmp_path / "src.dbn.zst", clx5.records[:8000])
    comp = src.read_bytes()
    # a flipped checksum byte: the data decodes, only the checksum can tell
    bad = bytearray(comp)
    bad[-2] ^= 0x10
    p = write(tmp_path / "flip.dbn.zst", bytes(bad))
    for how, fn in readers(p):
        with pytest.raises(CorruptFileError) as err:
            fn()
        msg = str(err.value)
        assert str(p) in msg and "checksum" in msg and "offset" in msg, how
        assert err.value.byte_offset > 0 and err.value.records_read >= 0
    # flips anywhere after the frame header: always a package error, never changed records
    rng = np.random.default_rng(5)
    for pos in rng.integers(6, len(comp), 60):
        bad = bytearray(comp)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        p = write(tmp_path / "flip.dbn.zst", bytes(bad))
        with pytest.raises(DataError) as err:
            load(p)
        assert str(p) in str(err.value)


def test_bytes_after_last_frame_are_reported(clx5, tmp_path):
    comp = write_dbn(tmp_path / "a.dbn.zst", clx5.records[:100]).read_bytes()
    p = write(tmp_path / "tail.dbn.zst", comp + b"garbage!")
    with pytest.raises(CorruptFileError, match="not the start of a Zstandard frame"):
        load(p)
    # a second frame and a skippable frame are fine (concatenated .zst)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(comp)
    half = 8 + struct.unpack("<I", raw[4:8])[0] + 50 * 56
    skip = struct.pack("<II", 0x184D2A50, 3) + b"abc"
    two = zst(raw[:half]) + skip + zst(raw[half:])
    p = write(tmp_path / "two.dbn.zst", two)
    assert load(p).records.tobytes() == clx5.records[:100].tobytes()
    assert sum(len(c) for c in iter_chunks(p, 7)) == 100


# ---- resource abuse: early checks, bounded memory


def zero_bomb(prefix: bytes, total: int) -> bytes:
    """``prefix`` then ``total`` zero bytes, as small concatenated zstd frames."""
    block = zstandard.ZstdCompressor(level=19).compress(bytes(8 << 20))
    return zst(prefix) + block * (total // (8 << 20))


@pytest.mark.parametrize("kind", ["zeros", "header_then_zeros", "record_then_zeros"])
@pytest.mark.parametrize("how", ["load", "iter_chunks"])
def test_zstd_bomb_rejected_early_with_bounded_memory(clx5_raw, tmp_path, kind, how):
    import tracemalloc

    prefix = {"zeros": b"", "header_then_zeros": clx5_raw[:CLX5_PRELUDE],
              "record_then_zeros": clx5_raw[:CLX5_PRELUDE + 56]}[kind]
    p = write(tmp_path / "bomb.dbn.zst", zero_bomb(prefix, 1200 << 20))  # 1.2 GB inside
    assert p.stat().st_size < 200_000
    fn = dict(readers(p))[how]
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(err.value, (NotDbnError, WrongSchemaError))
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB held before rejecting"
    if kind == "record_then_zeros":
        assert "record 1 has rtype 0x00" in str(err.value)


def test_metadata_length_bomb_rejected_at_once(clx5_raw, tmp_path):
    import tracemalloc

    head = b"DBN\x03" + struct.pack("<I", 200 << 20)  # claims 200 MiB of metadata
    p = write(tmp_path / "meta_bomb.dbn.zst", zero_bomb(head, 208 << 20))
    tracemalloc.start()
    try:
        for _how, fn in readers(p):
            with pytest.raises(NotDbnError, match="bytes of metadata"):
                fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_iter_chunks_zst_memory_is_bounded(tmp_path):
    import tracemalloc

    p = mbo_lab.write_synth(tmp_path / "m.dbn.zst", 200_000, seed=2, progress=False)
    tracemalloc.start()
    try:
        n = 0
        for c in iter_chunks(p, 5_000):
            n += len(c)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 200_000
    assert peak < 5_000 * 56 * 3 + (12 << 20), peak  # chunks + one decoder step, not 11 MB file


def test_iter_chunks_plain_maps_once_and_yields_views(clx5_path, clx5):
    chunks = list(iter_chunks(clx5_path, 10_000))
    assert [c.first_index for c in chunks] == [0, 10_000, 20_000, 30_000]
    mapped = {id(c._mapped) for c in chunks}
    assert len(mapped) == 1 and chunks[0].memory_mapped
    for c in chunks:
        assert not c.records.flags.owndata and not c.records.flags.writeable
        assert c.symbols == clx5.symbols and c.metadata == clx5.metadata
    assert np.concatenate([c.records for c in chunks]).tobytes() == clx5.records.tobytes()


def test_plain_allow_truncated_marks_data(clx5_raw, tmp_path):
    p = write(tmp_path / "cut.dbn", clx5_raw[: CLX5_PRELUDE + 1000 * 56 + 9])
    data = load(p, allow_truncated=True)
    assert len(data) == 1000 and data.truncated and data[10:20].truncated
    chunks = list(iter_chunks(p, 300, allow_truncated=True))
    assert [c.truncated for c in chunks] == [False, False, False, True]
    assert "TRUNCATED" in repr(data) and data.summary()["truncated"] is True
    assert load(write(tmp_path / "ok.dbn", clx5_raw[: CLX5_PRELUDE + 56])).truncated is False


def test_load_zst_is_read_only_and_early_rtype_check(clx5, tmp_path):
    recs = clx5.records[:3000].copy()
    recs["rtype"][2500] = 0x01
    p = write_dbn(tmp_path / "bad.dbn.zst", recs)
    with pytest.raises(WrongSchemaError, match="record 2,500 has rtype 0x01"):
        load(p)
    good = load(write_dbn(tmp_path / "good.dbn.zst", clx5.records[:3000]))
    assert not good.records.flags.writeable and not good.memory_mapped
    good.check_unchanged()  # no-op for data in memory


# ---- memory-mapped files changed after load()


@pytest.fixture()
def mapped(clx5, tmp_path):
    p = write_dbn(tmp_path / "m.dbn", clx5.records[:20_000], symbols=clx5.symbols)
    return p, load(p)


@pytest.mark.parametrize("change", ["truncate", "rewrite_same_size", "replace", "delete"])
def test_check_unchanged_detects_changes(mapped, change):
    import os

    p, data = mapped
    assert data.memory_mapped
    data.check_unchanged()
    kept = data.copy()
    if change == "truncate":
        os.truncate(p, 5_000)
    elif change == "rewrite_same_size":
        raw = p.read_bytes()
        st = p.stat()
        p.write_bytes(raw)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    elif change == "replace":
        tmp = p.with_name("new.dbn")
        tmp.write_bytes(p.read_bytes())
        os.replace(tmp, p)
    else:
        p.unlink()
    with pytest.raises(FileChangedError) as err:
        data.check_unchanged()
    assert isinstance(err.value, DataError)
    assert str(p) in str(err.value) and "load" in str(err.value)
    for call in (data.to_df, data.summary, lambda: data[10:20], lambda: data.between(0, 1),
                 data.copy, lambda: data.start_ns):
        with pytest.raises(FileChangedError):
            call()
    assert "changed" in repr(data) and "changed" in data._repr_html_()
    assert len(kept.to_df()) == 20_000 and not kept.memory_mapped  # a copy is detached


def test_truncated_in_place_does_not_kill_the_process(clx5, tmp_path):
    """Without the check, touching the records after the cut dies of SIGBUS."""
    import subprocess
    import sys

    p = write_dbn(tmp_path / "t.dbn", clx5.records)
    code = (
        "import os, sys, mbo_lab\n"
        "from mbo_lab.errors import FileChangedError\n"
        f"d = mbo_lab.load({str(p)!r}); part = d[30000:]\n"
        f"os.truncate({str(p)!r}, 4096)\n"
        "for f in (d.to_df, d.summary, part.to_df, lambda: d.between(0, 1)):\n"
        "    try:\n        f()\n    except FileChangedError:\n        pass\n"
        "    else:\n        sys.exit(3)\n"
        "print(repr(d)[:40])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "changed" in res.stdout


def test_check_unchanged_survives_chdir(mapped, tmp_path, monkeypatch):
    p, _ = mapped
    monkeypatch.chdir(p.parent)
    rel = load(p.name)
    monkeypatch.chdir("/")
    rel.check_unchanged()
    assert len(rel.to_df()) == 20_000


def test_iter_chunks_plain_stops_when_file_changes(clx5, tmp_path):
    import os

    p = write_dbn(tmp_path / "c.dbn", clx5.records[:10_000])
    it = iter_chunks(p, 1_000)
    first = next(it)
    assert len(first) == 1_000
    os.truncate(p, 20_000)
    with pytest.raises(FileChangedError, match="truncated in place"):
        next(it)


def test_mapped_data_pickles_as_a_copy(mapped):
    import pickle

    _, data = mapped
    back = pickle.loads(pickle.dumps(data[5:50]))
    assert back.records.tobytes() == data.records[5:50].tobytes()
    assert back.first_index == 5 and not back.memory_mapped


# ---- non-ASCII action/side bytes


def test_non_ascii_action_and_side_are_shown_and_counted(clx5, tmp_path):
    recs = clx5.records[:1000].copy()
    recs["action"][[3, 7]] = b"\xff"
    recs["side"][5] = b"\x80"
    recs["action"][9] = b"\x00"
    data = load(write_dbn(tmp_path / "odd.dbn", recs, symbols=clx5.symbols))
    s = data.summary()
    assert s["actions"]["\\xff"] == 2 and s["actions"]["\\x00"] == 1
    assert s["sides"]["\\x80"] == 1
    assert s["bad_action"] == 3 and s["bad_side"] == 1
    assert sum(s["actions"].values()) == sum(s["sides"].values()) == 1000
    assert "\\xff" in repr(data) and "bad_action=3" in repr(data)
    assert "\\xff" in data._repr_html_()
    df = data.to_df()
    assert df["action"].astype(str).iloc[3] == "\\xff" and df["side"].astype(str).iloc[5] == "\\x80"
    assert (df["action"].astype(str).to_numpy()[10:] == recs["action"][10:].astype("U1")).all()
    clean = clx5[:1000].summary()
    assert clean["bad_action"] == 0 and clean["bad_side"] == 0
    # the helpers other modules use instead of .decode() / astype("U1")
    from mbo_lab.io.records import byte_char, byte_chars

    assert [byte_char(x) for x in recs["action"][:10]] == df["action"].astype(str)[:10].tolist()
    assert byte_char(0x41) == "A" and byte_char(b"\xff") == "\\xff"
    assert byte_chars(recs["side"]).tolist() == df["side"].astype(str).tolist()
    assert byte_chars(recs["side"].view(np.uint8)).tolist() == df["side"].astype(str).tolist()


# ---- special inputs


def all_readers(path: Path):
    return readers(path) + [("check_input_path", lambda **kw: check_input_path(path))]


def assert_input_error(path: Path, *words: str) -> None:
    for how, fn in all_readers(path):
        with pytest.raises(InputPathError) as err:
            fn()
        msg = str(err.value)
        assert str(path) in msg, how
        for w in words:
            assert w in msg, (how, w, msg)


def test_special_inputs_name_the_real_cause(tmp_path):
    import os

    assert_input_error(tmp_path / "no" / "missing.dbn", "not found", "does not exist")
    assert_input_error(tmp_path, "is a directory")
    assert "not found" not in str(pytest.raises(DataError, load, tmp_path).value)
    loop = tmp_path / "loop.dbn"
    os.symlink(loop, loop)
    assert_input_error(loop, "symbolic link loop")
    dangling = tmp_path / "dangling.dbn"
    os.symlink(tmp_path / "gone.dbn", dangling)
    assert_input_error(dangling, "missing target")
    afile = write(tmp_path / "plain.txt", b"x")
    assert_input_error(afile / "inside.dbn", "not a folder")
    assert_input_error(Path("/dev/null"), "character device")


def test_fifo_is_refused_without_hanging(tmp_path):
    import os
    import signal

    fifo = tmp_path / "pipe.dbn.zst"
    os.mkfifo(fifo)
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError()))
    signal.alarm(10)
    try:
        assert_input_error(fifo, "named pipe")
        with pytest.raises(InputPathError):
            mbo_lab.mbp(fifo, levels=1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_unreadable_file(clx5, tmp_path, monkeypatch):
    import os

    p = write_dbn(tmp_path / "secret.dbn", clx5.records[:10])
    if os.geteuid() != 0:  # root reads anything: simulate the refusal instead
        p.chmod(0)
        assert_input_error(p, "permission denied")
        p.chmod(0o644)
    real_open = os.open

    def deny(path, *a, **kw):
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", deny)
    assert_input_error(p, "permission denied")


def test_check_input_path_returns_path(clx5_path):
    assert check_input_path(str(clx5_path)) == Path(clx5_path)
    assert issubclass(InputPathError, DataError) and issubclass(CorruptFileError, NotDbnError)
    assert issubclass(FileChangedError, DataError) and issubclass(DataError, MboLabError)


# ---- writer failures leave nothing half-written


class _FullDisk:
    """A binary file whose writes fail with ENOSPC after ``limit`` bytes."""

    def __init__(self, path, limit):
        self._f = open(path, "wb")  # noqa: SIM115
        self._left = limit

    def write(self, data):
        import errno

        if len(data) > self._left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.mark.parametrize("suffix", [".dbn", ".dbn.zst"])
def test_writer_failure_leaves_old_file_and_no_part(clx5, tmp_path, monkeypatch, suffix):
    import errno

    import mbo_lab.io.dbn as dbn

    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"old content")
    monkeypatch.setattr(dbn, "open", lambda p, mode: _FullDisk(p, 5_000), raising=False)
    with pytest.raises(OSError) as err:
        write_dbn(out, clx5.records)   # the zstd writer fails at write or at close
    assert err.value.errno == errno.ENOSPC
    assert out.read_bytes() == b"old content"
    assert sorted(x.name for x in tmp_path.iterdir()) == [out.name]
    monkeypatch.undo()
    real_replace = dbn.os.replace

    def failing_replace(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(dbn.os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_dbn(out, clx5.records[:10])
    monkeypatch.setattr(dbn.os, "replace", real_replace)
    assert out.read_bytes() == b"old content"
    assert sorted(x.name for x in tmp_path.iterdir()) == [out.name]


def test_package_errors_render_without_traceback_in_ipython():
    """IPython shows a MboLabError as its message alone (``_render_traceback_``)."""
    from mbo_lab.errors import DataError, MboLabError

    err = DataError("no such file: x.dbn; check the path")
    assert isinstance(err, MboLabError)
    assert err._render_traceback_() == ["DataError: no such file: x.dbn; check the path"]
    with pytest.raises(DataError) as info:
        mbo_lab.load("/nonexistent/dir/x.dbn")
    lines = info.value._render_traceback_()
    assert len(lines) == 1 and "x.dbn" in lines[0] and "Traceback" not in lines[0]
