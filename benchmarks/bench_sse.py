"""SSE server benchmark under many, slow and stalled clients (prints a table; not a test).

1. Record stream: 100 and 1,000 concurrent aiohttp clients (``TCPConnector(limit=0)``)
   each read the whole record stream; every client checks every record once, in order
   (zero loss); aggregate records/s.
2. Book stream p99 (latency = arrival - ``published_at``, raw-socket clients, frames
   published at 30/s, ``max_hz=30``): alone, and while 100 record readers (another
   process) read the record stream over and over. Target p99 < 10 ms.
3. Time to first byte p99 for a burst of 1,000 connects asking for the book stream.
4. Server RSS with 50 stalled record clients (they never read).

The server runs in a subprocess; everything binds 127.0.0.1 and ends by itself.

    .venv/bin/python benchmarks/bench_sse.py [--file F] [--clients 100] [--many 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

_FIRST_LAST = re.compile(rb'"first":(\d+),"last":(\d+)')
_PUBLISHED = re.compile(rb'"published_at":([0-9.e+-]+)')


# ------------------------------------------------------------------------------ server
def serve(args: argparse.Namespace) -> None:
    """Server process: serve FILE; publish a frame every 1/hz s (session.step)."""
    import mbo_lab
    from mbo_lab.serve import start

    session = mbo_lab.open(args.file, fps=240)

    async def main() -> None:
        srv = start(session, "127.0.0.1", 0, max_streams=4096, send_timeout=30,
                    max_connections=6000)
        # pre-serialize the record stream (what the first client would pay)
        t0 = time.perf_counter()
        pos = 0
        while pos < srv.feed.n:
            pos = srv.feed.event(pos, srv.feed.n)[1] + 1
        print(f"READY {srv.port} {srv.feed.n} {time.perf_counter() - t0:.3f}", flush=True)
        period = 1.0 / args.hz
        nxt = time.perf_counter()
        fanout: list[float] = []  # publication -> last inline write, with clients attached
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        while not stop.is_set():  # publish at a steady rate, wrapping at the end
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            if session.position >= len(session):
                session.to_start()
            else:
                session.step(1)
            if len(srv.hub.clients) >= args.clients:
                fanout.append(time.time() - srv.hub.published_at)
        if fanout:
            a = np.array(fanout) * 1000
            print(f"FANOUT {len(a)} {np.percentile(a, 50):.2f} {np.percentile(a, 99):.2f} "
                  f"{a.max():.2f}", flush=True)
        await srv.stop()

    asyncio.run(main())


def raw_serve(args: argparse.Namespace) -> None:
    """Calibration server: plain asyncio, no HTTP, no Tornado, no book. It writes a 2.5 KB
    message carrying ``"published_at"`` to every connection at ``hz``: the floor that this
    machine's loopback and scheduler set for the same fan-out."""
    import socket

    async def main() -> None:
        conns: list = []

        async def on_conn(reader, writer) -> None:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                       socket.TCP_NODELAY, 1)
            await reader.readuntil(b"\r\n\r\n")
            conns.append(writer)

        srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        print(f"READY {srv.sockets[0].getsockname()[1]} 0 1", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        pad = b"x" * 2500
        nxt = time.perf_counter()
        while not stop.is_set():
            nxt += 1.0 / args.hz
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            msg = b'{"pad":"%s","published_at":%.6f}\n\n' % (pad, time.time())
            for w in list(conns):
                if w.is_closing():
                    conns.remove(w)
                else:
                    w.write(msg)

    asyncio.run(main())


# ------------------------------------------------------------------------------ clients
class SSEReader:
    """Minimal incremental SSE splitter over aiohttp's stream (bytes; no per-line work)."""

    def __init__(self, resp):
        self.resp = resp
        self.buf = bytearray()

    async def events(self):
        buf = self.buf
        while True:
            start = 0
            while True:
                cut = buf.find(b"\n\n", start)
                if cut < 0:
                    break
                yield bytes(buf[start:cut])
                start = cut + 2
            if start:
                del buf[:start]
            chunk = await self.resp.content.readany()
            if not chunk:
                return
            buf += chunk


async def record_client(http, url: str, n: int) -> tuple[int, float]:
    expected = 0
    t0 = time.perf_counter()
    async with http.get(url, headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200, resp.status
        async for block in SSEReader(resp).events():
            if block.startswith(b"event: mbo"):
                m = _FIRST_LAST.search(block, 0, 200)
                first, last = int(m.group(1)), int(m.group(2))
                if first != expected:
                    raise AssertionError(f"expected record {expected}, got {first}")
                expected = last + 1
            elif block.startswith(b"event: end"):
                break
            elif block.startswith(b"event: overflow"):
                raise AssertionError("overflow: the client fell behind")
    if expected != n:
        raise AssertionError(f"got {expected} of {n} records")
    return expected, time.perf_counter() - t0


async def bench_records(base: str, n: int, clients: int) -> None:
    import aiohttp

    url = base + "v1/stream/mbo"
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as http:
        got, dt = await record_client(http, url, n)
        print(f"  1 client:    {got:,} records in {dt:.3f} s = {got / dt / 1e6:.2f} M rec/s")
        t0 = time.perf_counter()
        res = await asyncio.gather(*[record_client(http, url, n) for _ in range(clients)])
        wall = time.perf_counter() - t0
    total = sum(r[0] for r in res)
    per = sorted(r[1] for r in res)
    print(f"  {clients} clients: {total:,} records ({clients} x {n:,}, none lost or repeated) "
          f"in {wall:.2f} s = {total / wall / 1e6:.2f} M rec/s aggregate "
          f"(per client {per[0]:.2f}..{per[-1]:.2f} s)")
    ok = total / wall >= 1e6
    print(f"  target >= 1M rec/s aggregate: {'MET' if ok else 'NOT MET'}")


async def book_client(http, url: str, seconds: float, lat: list, counts: list,
                      spans: list) -> None:
    n = 0
    seqs = []
    t_end = time.monotonic() + seconds
    async with http.get(url, headers={"Accept": "text/event-stream"}) as resp:
        first = True
        async for block in SSEReader(resp).events():
            now = time.time()
            if block.startswith(b"event: book"):
                if first:  # the snapshot sent at connect was published earlier
                    first = False
                else:
                    m = _PUBLISHED.search(block, max(0, len(block) - 200))
                    lat.append(now - float(m.group(1)))
                    seqs.append(int(block[block.rfind(b"\nid: ") + 5:]))
                    n += 1
            if time.monotonic() > t_end:
                break
    counts.append(n)
    if len(seqs) > 1:
        spans.append(seqs[-1] - seqs[0] + 1)


async def book_clients(base: str, clients: int, seconds: float
                       ) -> tuple[list[float], list[int], list[int]]:
    import aiohttp

    url = base + "v1/stream/book?levels=10&max_hz=30"
    lat: list[float] = []
    counts: list[int] = []
    spans: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=seconds + 60)) as http:
        await asyncio.gather(*[book_client(http, url, seconds, lat, counts, spans)
                               for _ in range(clients)])
    return lat, counts, spans


class _LeanBookClient(asyncio.Protocol):
    """A raw-socket SSE client: records arrival - published_at per frame, nothing more
    (measures the server rather than the client library)."""

    def __init__(self, path: str, lat: list, seqs: list):
        self.path, self.lat, self.seqs = path, lat, seqs
        self.buf = b""
        self.first = True

    def connection_made(self, transport) -> None:
        transport.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Accept: text/event-stream\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data
        pos = 0
        while True:
            m = _PUBLISHED.search(buf, pos)
            if m is None or m.end() == len(buf):  # none, or the number may go on
                break
            pos = m.end()
            if self.first:
                self.first = False
            else:
                self.lat.append(now - float(m.group(1)))
                self.seqs.append(1)
        self.buf = buf[pos:] if pos else buf[-4096:]


async def lean_book_clients(base: str, clients: int, seconds: float
                            ) -> tuple[list[float], list[int], list[int]]:
    host, port = base.split("//")[1].strip("/").split(":")
    lat: list[float] = []
    per: list[list] = [[] for _ in range(clients)]
    loop = asyncio.get_running_loop()
    conns = [await loop.create_connection(
        lambda k=k: _LeanBookClient("/v1/stream/book?levels=10&max_hz=30", lat, per[k]),
        host, int(port)) for k in range(clients)]
    await asyncio.sleep(seconds)
    for transport, _ in conns:
        transport.close()
    return lat, [len(p) for p in per], []


def book_worker(base: str, clients: int, seconds: float, out) -> None:
    """A client process (--client-procs): sends its measurements back through a pipe."""
    out.send(asyncio.run(book_clients(base, clients, seconds)))
    out.close()


async def bench_book(base: str, clients: int, seconds: float, hz: float, procs: int,
                     lean: bool = False) -> None:
    if lean:
        lat, counts, spans = await lean_book_clients(base, clients, seconds)
    elif procs <= 1:
        lat, counts, spans = await book_clients(base, clients, seconds)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        pipes, workers = [], []
        for k in range(procs):
            r, w = ctx.Pipe(duplex=False)
            n = clients // procs + (k < clients % procs)
            p = ctx.Process(target=book_worker, args=(base, n, seconds, w))
            p.start()
            pipes.append(r)
            workers.append(p)
        lat, counts, spans = [], [], []
        for r in pipes:
            a, b, c = await asyncio.to_thread(r.recv)
            lat += a
            counts += b
            spans += c
        for p in workers:
            p.join(30)
    a = np.array(lat) * 1000
    kind = "raw-socket" if lean else f"aiohttp, {procs} process(es)"
    print(f"  {clients} {kind} clients x {seconds:g} s, frames published at "
          f"{hz:g}/s, max_hz=30: "
          f"{len(a):,} frames received ({np.mean(counts) / seconds:.1f}/s per client; "
          + (f"{sum(counts) / sum(spans):.1%} of the frames published meanwhile)" if spans
             else "frames not checked)"))
    print(f"  latency publish -> receipt: p50 {np.percentile(a, 50):.2f} ms, "
          f"p90 {np.percentile(a, 90):.2f} ms, p99 {np.percentile(a, 99):.2f} ms, "
          f"max {a.max():.2f} ms")
    print(f"  target p99 < 10 ms: {'MET' if np.percentile(a, 99) < 10 else 'NOT MET'}")


def _cpu_meter(pid: int):
    """CPU seconds used by the server and by this (client) process since the last call."""
    def read() -> tuple[float, float]:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        me = os.times()
        return ((int(st[11]) + int(st[12])) / tick,
                me.user + me.system + me.children_user + me.children_system)

    last = [read(), time.perf_counter()]

    def delta() -> str:
        (s0, c0), t0 = last
        (s1, c1), t1 = read(), time.perf_counter()
        last[:] = [(s1, c1), t1]
        return (f"  CPU over {t1 - t0:.1f} s wall: server {s1 - s0:.2f} s, clients "
                f"{c1 - c0:.2f} s (load average {os.getloadavg()[0]:.1f} on "
                f"{os.cpu_count()} CPUs)")

    return delta


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------- scenarios (issue 13)
async def records_run(base: str, n: int, clients: int) -> tuple[float, float]:
    """``clients`` aiohttp readers of the whole stream at once; each checks every record
    once and in order. Returns (aggregate records/s, wall seconds)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=1200)) as http:
        t0 = time.perf_counter()
        res = await asyncio.gather(*[record_client(http, base + "v1/stream/mbo", n)
                                     for _ in range(clients)])
        wall = time.perf_counter() - t0
    assert sum(r[0] for r in res) == n * clients
    return n * clients / wall, wall


def record_load_worker(base: str, n: int, clients: int, seconds: float, out) -> None:
    """A process of ``clients`` record readers that start over until ``seconds`` pass."""

    async def one(http, stop_at: float) -> int:
        got = 0
        while time.monotonic() < stop_at:
            got += (await record_client(http, base + "v1/stream/mbo", n))[0]
        return got

    async def main() -> int:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=600)) as http:
            stop_at = time.monotonic() + seconds
            return sum(await asyncio.gather(*[one(http, stop_at) for _ in range(clients)]))

    out.send(asyncio.run(main()))
    out.close()


async def book_p99(base: str, clients: int, seconds: float) -> tuple[float, float, int]:
    lat, counts, _ = await lean_book_clients(base, clients, seconds)
    a = np.array(lat) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), len(a)


async def ttfb_burst(host: str, port: int, n: int) -> tuple[float, float, int]:
    """``n`` connections opened at once, each asking for the book stream; time from the
    connect call to the first response byte. Returns (p50 ms, p99 ms, failures)."""
    req = (b"GET /v1/stream/book?levels=1&max_hz=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Accept: text/event-stream\r\n\r\n")

    async def one() -> float | None:
        t0 = time.perf_counter()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
            w.write(req)
            first = await asyncio.wait_for(r.read(1), 30)
            dt = time.perf_counter() - t0
            w.close()
            return dt if first else None
        except (TimeoutError, OSError):
            return None

    res = await asyncio.gather(*[one() for _ in range(n)])
    ok = np.array([x for x in res if x is not None]) * 1000
    return float(np.percentile(ok, 50)), float(np.percentile(ok, 99)), n - len(ok)


def stalled_clients(host: str, port: int, n: int) -> list:
    import socket

    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, port))
        s.sendall(b"GET /v1/stream/mbo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Accept: text/event-stream\r\n\r\n")
        socks.append(s)
    return socks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100, help="record clients (and the "
                   "record load during the book measurement)")
    p.add_argument("--many", type=int, default=1000, help="the large record-client run")
    p.add_argument("--book-clients", type=int, default=10)
    p.add_argument("--burst", type=int, default=1000, help="connects in the TTFB burst")
    p.add_argument("--stalled", type=int, default=50)
    p.add_argument("--file", default=None, help="DBN file (default: the CLX5 sample)")
    p.add_argument("--seconds", type=float, default=10.0, help="book stream duration")
    p.add_argument("--hz", type=float, default=30.0, help="frames published per second")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--raw-serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.file is None:
        from mbo_lab.config import get_settings

        args.file = get_settings().data_path
    if args.serve:
        serve(args)
        return
    if args.raw_serve:
        raw_serve(args)
        return
    if not os.path.exists(args.file):
        sys.exit(f"{args.file} is missing; pass --file")
    import multiprocessing as mp
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--file", args.file,
                             "--hz", str(args.hz), "--clients", str(args.book_clients)],
                            stdout=subprocess.PIPE, text=True)
    rows: list[tuple[str, str]] = []
    try:
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            sys.exit("the server did not start")
        port, n = int(line[1]), int(line[2])
        base = f"http://127.0.0.1:{port}/"
        print(f"server: {base} serving {os.path.basename(args.file)} ({n:,} records), "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; clients: "
              "aiohttp 3 (record streams), raw asyncio sockets (book streams, TTFB), "
              "blocking raw sockets (stalled)", flush=True)
        cpu = _cpu_meter(proc.pid)
        for k in (args.clients, args.many):
            rate, wall = asyncio.run(records_run(base, n, k))
            rows.append((f"record stream, {k} clients (zero loss checked)",
                         f"{rate / 1e6:.2f} M rec/s aggregate, {wall:.1f} s"))
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
            print(cpu(), flush=True)

        # calibration: a bare asyncio server (no HTTP, Tornado or book) sending messages of
        # the same size and rate, measured by the same clients at the same time: the floor
        # this machine's scheduler and loopback set right now
        cal = subprocess.Popen([sys.executable, __file__, "--raw-serve", "--hz",
                                str(args.hz)], stdout=subprocess.PIPE, text=True)
        cal_base = f"http://127.0.0.1:{int(cal.stdout.readline().split()[1])}/"

        async def both() -> tuple:
            return await asyncio.gather(
                book_p99(base, args.book_clients, args.seconds),
                book_p99(cal_base, args.book_clients, args.seconds))

        def book_rows(label: str) -> None:
            (p50, p99, cnt), (c50, c99, ccnt) = asyncio.run(both())
            rows.append((f"book stream, {args.book_clients} clients {label}",
                         f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({cnt} frames)"))
            rows.append(("  calibration: bare asyncio server, same time",
                         f"p50 {c50:.2f} ms, p99 {c99:.2f} ms ({ccnt} messages)"))
            for row in rows[-2:]:
                print(f"  {row[0]}: {row[1]}", flush=True)

        try:
            book_rows("alone")
            ctx = mp.get_context("spawn")
            r, w = ctx.Pipe(duplex=False)
            load = ctx.Process(target=record_load_worker,
                               args=(base, n, args.clients, args.seconds + 4, w))
            load.start()
            time.sleep(3.0)  # the record readers are connected and reading
            book_rows(f"+ {args.clients} record readers")
            got = r.recv()
            load.join(60)
            rows.append((f"  ({args.clients} record readers meanwhile)",
                         f"{got:,} records, zero loss"))
            print(cpu(), flush=True)
        finally:
            cal.terminate()
            cal.wait(10)

        p50, p99, fails = asyncio.run(ttfb_burst("127.0.0.1", port, args.burst))
        rows.append((f"time to first byte, burst of {args.burst} connects",
                     f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {fails} failed"))
        print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
        cal = subprocess.Popen([sys.executable, __file__, "--raw-serve", "--hz", "1000"],
                               stdout=subprocess.PIPE, text=True)
        try:
            cport = int(cal.stdout.readline().split()[1])
            p50, p99, fails = asyncio.run(ttfb_burst("127.0.0.1", cport, args.burst))
            rows.append(("  calibration: bare asyncio server (answers within 1 ms)",
                         f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {fails} failed"))
            print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
        finally:
            cal.terminate()
            cal.wait(10)
        time.sleep(2.0)

        before = rss_mb(proc.pid)
        socks = stalled_clients("127.0.0.1", port, args.stalled)
        peak = before
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.2)
        for so in socks:
            so.close()
        rows.append((f"server RSS, {args.stalled} stalled record clients (10 s)",
                     f"{before:.0f} MB before, peak {peak:.0f} MB (+{peak - before:.1f} MB)"))
        print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
        proc.terminate()
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    print()
    w0 = max(len(a) for a, _ in rows)
    print(f"{'scenario':<{w0}}  result")
    print(f"{'-' * w0}  {'-' * 40}")
    for a, b in rows:
        print(f"{a:<{w0}}  {b}")
    print(f"(load average now {os.getloadavg()[0]:.1f}; timings are noisy: 2 CPUs shared "
          "with other jobs)")


if __name__ == "__main__":
    main()
