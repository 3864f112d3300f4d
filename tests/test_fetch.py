"""Tests of mbo_lab.io.fetch and mbo_lab.io.live without internet.

``databento.Historical`` talks to a local stand-in of the Historical API over HTTPS (the
client forces ``https://`` on any gateway URL, so the stand-in serves TLS with a throwaway
self-signed certificate trusted through ``REQUESTS_CA_BUNDLE``). ``databento.Live`` talks
to a local stand-in of the live gateway's raw TCP protocol: greeting, CRAM challenge,
authentication, subscription, session start, then a DBN stream.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import socketserver
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest

import mbo_lab
from mbo_lab.io import fetch as F
from mbo_lab.io.dbn import _metadata_bytes, load, write_dbn
from mbo_lab.io.live import LiveRecorder, start_live

KEY = "db-TESTKEYabcdefghijklmnopqrs12345"
START, END = "2025-01-02T14:30", "2025-01-02T15:00"


# --------------------------------------------------------------------------- Historical


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the stand-in's TLS certificate")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    return crt, key


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[np.ndarray, bytes]:
    recs = mbo_lab.synth_records(5_000, seed=9)
    path = write_dbn(tmp_path_factory.mktemp("body") / "body.dbn.zst", recs,
                     dataset="GLBX.MDP3", symbols={1001: "CLG5", 1002: "ESH5", 1003: "SYNQ"})
    return recs, path.read_bytes()


class _State:
    def __init__(self, body: bytes):
        self.body = body
        self.count = 5_000
        self.cost = 0.25
        self.requests: list[tuple[str, dict, str]] = []
        self.fail_get_range: int | None = None


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        st = self.state
        n = int(self.headers.get("Content-Length", 0))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode(),
                                              keep_blank_values=True).items()}
        auth = self.headers.get("Authorization", "")
        user = base64.b64decode(auth[6:]).decode().split(":")[0] if auth.startswith(
            "Basic ") else ""
        st.requests.append((self.path, form, user))
        if user != KEY:
            self._json(401, {"detail": "Authentication failed."})
        elif self.path == "/v0/metadata.get_record_count":
            self._json(200, st.count)
        elif self.path == "/v0/metadata.get_cost":
            self._json(200, st.cost)
        elif self.path == "/v0/timeseries.get_range":
            if st.fail_get_range:
                self._json(st.fail_get_range, {"detail": "Symbol 'NOPE' not found."})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(st.body)))
            self.end_headers()
            self.wfile.write(st.body)
        else:
            self._json(404, {"detail": f"no endpoint {self.path}"})


@pytest.fixture
def gateway(cert, served, monkeypatch, tmp_path):
    state = _State(served[1])
    handler = type("H", (_Handler,), {"state": state})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("DATABENTO_API_KEY", KEY)
    monkeypatch.setenv("MBO_LAB_CACHE_DIR", str(tmp_path / "cache"))
    state.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield state
    srv.shutdown()
    srv.server_close()


def _paths(state) -> list[str]:
    return [p for p, _, _ in state.requests]


def test_download_then_cache(gateway, served, caplog):
    caplog.set_level(logging.DEBUG)
    data = F.fetch("GLBX.MDP3", ["SYNQ", "CLG5"], START, END, gateway=gateway.url)
    assert isinstance(data, mbo_lab.MboData)
    assert data.records.tobytes() == served[0].tobytes()
    assert _paths(gateway) == ["/v0/metadata.get_record_count", "/v0/metadata.get_cost",
                               "/v0/timeseries.get_range"]
    _, form, user = gateway.requests[-1]
    assert user == KEY
    assert form["dataset"] == "GLBX.MDP3" and form["schema"] == "mbo"
    assert form["symbols"] == "CLG5,SYNQ" and form["stype_in"] == "raw_symbol"
    assert form["start"] == "2025-01-02T14:30:00+00:00"
    assert form["end"] == "2025-01-02T15:00:00+00:00"
    assert form["encoding"] == "dbn" and form["compression"] == "zstd"
    path = Path(data.path)
    assert path.name.endswith(".dbn.zst") and path.parent.name == "GLBX.MDP3"
    assert path == F.cache_path("GLBX.MDP3", ["CLG5", "SYNQ"], START, END)
    side = json.loads(path.with_name(path.name.replace(".dbn.zst", ".json")).read_text())
    assert side["record_count"] == 5_000 and side["cost"] == 0.25
    assert not list(path.parent.glob("*.part"))
    # the same request again: from the cache, no network, no key needed
    n = len(gateway.requests)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DATABENTO_API_KEY")
        again = F.fetch("glbx.mdp3", "CLG5 SYNQ".split()[::-1], "2025-01-02 14:30:00Z",
                        "2025-01-02T15:00:00+00:00", gateway=gateway.url)
    assert len(gateway.requests) == n and again.path == data.path
    assert again.records.tobytes() == served[0].tobytes()
    # the key never reaches a log line or the cache files
    assert KEY not in caplog.text
    assert KEY.encode() not in b"".join(p.read_bytes() for p in path.parent.iterdir())


def test_other_schema_returns_dbnstore(gateway):
    store = F.fetch("GLBX.MDP3", "CLG5", START, END, schema="mbp-1", gateway=gateway.url)
    import databento

    assert isinstance(store, databento.DBNStore)
    assert gateway.requests[-1][1]["schema"] == "mbp-1"
    assert F.cache_path("GLBX.MDP3", "CLG5", START, END, schema="mbp-1") != \
        F.cache_path("GLBX.MDP3", "CLG5", START, END)


def test_no_key(gateway, monkeypatch):
    monkeypatch.delenv("DATABENTO_API_KEY")
    with pytest.raises(F.MissingApiKeyError) as exc:
        F.fetch("GLBX.MDP3", "CLG5", START, END, gateway=gateway.url)
    msg = str(exc.value)
    assert "DATABENTO_API_KEY" in msg and "mbo_lab.demo_path()" in msg
    assert isinstance(exc.value, mbo_lab.MboLabError)
    assert gateway.requests == []


def test_cost_confirmation(gateway, monkeypatch):
    gateway.cost = 42.0
    with pytest.raises(F.DownloadCancelled, match="confirm=True"):
        F.fetch("GLBX.MDP3", "CLG5", START, END, gateway=gateway.url)  # stdin is no TTY
    with pytest.raises(F.DownloadCancelled, match="not confirmed"):
        F.fetch("GLBX.MDP3", "CLG5", START, END, gateway=gateway.url, confirm=False)
    assert "/v0/timeseries.get_range" not in _paths(gateway)
    seen = []
    data = F.fetch("GLBX.MDP3", "CLG5", START, END, gateway=gateway.url,
                   confirm=lambda info: seen.append(info) or True)
    assert len(data) == 5_000
    assert seen[0]["cost"] == 42.0 and seen[0]["record_count"] == 5_000
    # interactive: a TTY prompt
    asked = []
    monkeypatch.setattr("sys.stdin", type("T", (io.StringIO,), {"isatty": lambda s: True})())
    monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or "y")
    F.fetch("GLBX.MDP3", "ESH5", START, END, gateway=gateway.url)
    assert "5,000 mbo records" in asked[0] and "$42.00" in asked[0]
    monkeypatch.setattr("builtins.input", lambda q: "n")
    with pytest.raises(F.DownloadCancelled):
        F.fetch("GLBX.MDP3", "SYNQ", START, END, gateway=gateway.url)
    # above-threshold checks can be switched off; below-threshold needs no confirmation
    before = len(gateway.requests)
    F.fetch("GLBX.MDP3", "SYNQ", START, END, gateway=gateway.url, cost_threshold=None)
    assert _paths(gateway)[before:] == ["/v0/timeseries.get_range"]
    gateway.cost = 0.5
    F.fetch("GLBX.MDP3", "SYNQ", START, "2025-01-02T16:00", gateway=gateway.url)


def test_server_errors_cache_nothing(gateway, monkeypatch):
    gateway.fail_get_range = 422
    with pytest.raises(F.FetchError, match="not found") as exc:
        F.fetch("GLBX.MDP3", "NOPE", START, END, gateway=gateway.url)
    assert KEY not in str(exc.value)
    path = F.cache_path("GLBX.MDP3", "NOPE", START, END)
    assert not path.exists() and not list(path.parent.glob("*"))
    monkeypatch.setenv("DATABENTO_API_KEY", "db-WRONGkeyxxxxxxxxxxxxxxxxxxxxxxx")
    with pytest.raises(F.FetchError, match="Authentication failed"):
        F.fetch("GLBX.MDP3", "CLG5", START, END, gateway=gateway.url)


def test_bad_requests():
    with pytest.raises(F.FetchError, match="not after"):
        F.request_key("GLBX.MDP3", "CLG5", END, START)
    with pytest.raises(F.FetchError, match="symbols"):
        F.request_key("GLBX.MDP3", [], START, END)
    assert F.request_key("GLBX.MDP3", "CLG5", START, END) != \
        F.request_key("GLBX.MDP3", "CLG5", START, "2025-01-02T15:00:01")
    for bad in ("not a date", "", object(), True):
        with pytest.raises(F.FetchError, match="start"):
            F.request_key("GLBX.MDP3", "CLG5", bad, END)
    with pytest.raises(F.FetchError, match="end 'tomorrow-ish'"):
        F.fetch("GLBX.MDP3", "CLG5", START, "tomorrow-ish")


# --------------------------------------------------------------------------- Live


class _LiveServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _live_gateway(payload: bytes, log: list):
    from databento.common.cram import get_challenge_response

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            challenge = "Q7rJ2x"
            self.wfile.write(b"lsg_version=0.0.0-test\n")
            self.wfile.write(f"cram={challenge}\n".encode())
            self.wfile.flush()
            line = self.rfile.readline().decode()
            fields = dict(kv.split("=", 1) for kv in line.strip().split("|"))
            log.append(("auth", fields))
            if fields.get("auth") != get_challenge_response(challenge, KEY):
                self.wfile.write(b"success=0|error=Authentication failed.\n")
                return
            self.wfile.write(b"success=1|session_id=7\n")
            self.wfile.flush()
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                fields = dict(kv.split("=", 1) for kv in line.decode().strip().split("|"))
                log.append(("control", fields))
                if "start_session" in fields:
                    break
            for i in range(0, len(payload), 4096):  # arrives in pieces, as on a network
                self.wfile.write(payload[i: i + 4096])
                self.wfile.flush()
            time.sleep(0.05)

    srv = _LiveServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _live_payload(recs: np.ndarray) -> bytes:
    import databento_dbn as dbn

    meta = _metadata_bytes(dataset="GLBX.MDP3", start=int(recs["ts_recv"][0]), end=None,
                           symbols=["CLG5"], mappings=None, version=3)
    sym = dbn.SymbolMappingMsg(publisher_id=1, instrument_id=1001, ts_event=0,
                               stype_in=dbn.SType.RAW_SYMBOL, stype_in_symbol="CLG5",
                               stype_out=dbn.SType.INSTRUMENT_ID, stype_out_symbol="1001",
                               start_ts=0, end_ts=2**63)
    sysmsg = dbn.SystemMsg(ts_event=0, msg="Subscription request 0 for mbo data succeeded")
    half = len(recs) // 2
    return (meta + bytes(sym) + recs[:half].tobytes() + bytes(sysmsg)
            + recs[half:].tobytes())


def test_live_bridge_through_gateway_protocol(monkeypatch, tmp_path):
    recs = mbo_lab.synth_records(3_000, seed=4)
    recs = recs[recs["instrument_id"] == 1001]
    log: list = []
    srv = _live_gateway(_live_payload(recs), log)
    monkeypatch.setenv("DATABENTO_API_KEY", KEY)
    try:
        feed = start_live("GLBX.MDP3", "CLG5", gateway="127.0.0.1",
                          port=srv.server_address[1], recorder=LiveRecorder(capacity=16))
        assert feed.recorder.wait_for(len(recs), timeout=20)
        feed.wait(timeout=20)
    finally:
        srv.shutdown()
        srv.server_close()
    kinds = [k for k, _ in log]
    assert kinds[0] == "auth" and kinds[-1] == "control"
    assert log[0][1]["dataset"] == "GLBX.MDP3" and KEY not in log[0][1]["auth"]
    sub = log[1][1]
    assert (sub["schema"], sub["symbols"], sub["stype_in"]) == ("mbo", "CLG5", "raw_symbol")
    data = feed.data()
    assert data.records.tobytes() == recs.tobytes()
    assert data.symbols == {1001: "CLG5"} and feed.recorder.system
    assert not data.records.flags.writeable
    # the growing array replays like a file: same book states as the original records
    live_bbo = mbo_lab.bbo(data)
    assert set(live_bbo.pop("symbol")) == {"CLG5"}
    assert live_bbo.equals(mbo_lab.bbo(recs).drop(columns="symbol"))
    tail = feed.since(len(recs) - 10)
    assert tail.first_index == len(recs) - 10 and len(tail) == 10
    saved = load(feed.save(tmp_path / "live.dbn.zst"))
    assert saved.records.tobytes() == recs.tobytes() and saved.symbols == {1001: "CLG5"}


def test_live_wrong_key_and_no_key(monkeypatch):
    log: list = []
    srv = _live_gateway(b"", log)
    try:
        monkeypatch.setenv("DATABENTO_API_KEY", "db-WRONGkeyxxxxxxxxxxxxxxxxxxxxxxx")
        with pytest.raises(F.FetchError, match="Authentication failed"):
            start_live("GLBX.MDP3", "CLG5", gateway="127.0.0.1", port=srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()
    monkeypatch.delenv("DATABENTO_API_KEY")
    with pytest.raises(F.MissingApiKeyError, match="demo_path"):
        start_live("GLBX.MDP3", "CLG5")


def test_recorder_grows_and_views_stay_valid():
    recs = mbo_lab.synth_records(1_000, seed=2)
    r = LiveRecorder(capacity=16, max_records=900)
    views = []
    for i in range(0, len(recs), 7):
        r.append(recs[i: i + 7])
        views.append(r.data())
    assert len(r) == 900 and r.dropped == 100
    for v in views:
        assert v.records.tobytes() == recs[: len(v)].tobytes()
    chunks = []
    done = 0
    while done < len(r):  # follow the stream incrementally, as a replay would
        part = r.since(done)
        chunks.append(part.records.copy())
        done += len(part)
    assert np.concatenate(chunks).tobytes() == recs[:900].tobytes()
    assert not r.wait_for(901, timeout=0.01)
