"""A real Prometheus server scrapes the SSE server's /metrics.

Starts Debian's ``prometheus`` binary with a temporary config (scrape every 1 s, loopback
only, temporary TSDB), waits for scrapes and compares what Prometheus stored (HTTP API
``/api/v1/query``) with what the process registry reports. Skipped when the binary is
missing, unless ``MBO_LAB_REQUIRE_PROMETHEUS=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time

import aiohttp
import pytest

import mbo_lab
from mbo_lab import metrics
from mbo_lab.serve import start

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(150)]

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture(scope="module")
def prometheus_bin():
    if PROMETHEUS is None:
        if os.environ.get("MBO_LAB_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("MBO_LAB_REQUIRE_PROMETHEUS=1 but no `prometheus` binary on PATH "
                        "(apt-get install prometheus)")
        pytest.skip("no `prometheus` binary on PATH (apt-get install prometheus); "
                    "set MBO_LAB_REQUIRE_PROMETHEUS=1 to make this a failure")
    return PROMETHEUS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def query(http, base: str, promql: str) -> list:
    async with http.get(base + "api/v1/query", params={"query": promql}) as r:
        body = await r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def scraped_value(http, base: str, promql: str) -> float | None:
    res = await query(http, base, promql)
    return float(res[0]["value"][1]) if res else None


async def wait_for_value(http, base, promql, expected, timeout=40.0):
    """Poll until Prometheus reports ``expected`` (returns the last value seen)."""
    t_end = time.monotonic() + timeout
    seen = None
    while time.monotonic() < t_end:
        try:
            seen = await scraped_value(http, base, promql)
        except (aiohttp.ClientError, AssertionError):
            seen = None
        if seen == expected:
            return seen
        await asyncio.sleep(0.25)
    return seen


def test_prometheus_scrapes_the_registry(prometheus_bin, tmp_path):
    session = mbo_lab.open(mbo_lab.synth_records(5000, seed=11))
    prom_port = free_port()
    base = f"http://127.0.0.1:{prom_port}/"

    async def main():
        srv = start(session, "127.0.0.1", 0)
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: mbo_lab\n    scrape_interval: 1s\n"
            "    scrape_timeout: 900ms\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{srv.port}']\n")
        proc = subprocess.Popen(
            [prometheus_bin, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                # 1. a scrape happened: up == 1 for our target
                up = await wait_for_value(http, base, 'up{job="mbo_lab"}', 1.0, timeout=60)
                assert up == 1.0, f"Prometheus never scraped {srv.url}metrics"
                targets = await (await http.get(base + "api/v1/targets")).json()
                health = [t["health"] for t in targets["data"]["activeTargets"]]
                assert health == ["up"], json.dumps(targets)[:500]

                # 2. stream records, then the scraped counter equals the registry's
                async with http.get(srv.url + "v1/stream/mbo?to=3000") as r:
                    assert r.status == 200
                    await r.read()
                expected = metrics.sample("mbo_sse_records_sent_total")
                assert expected is not None and expected >= 3000
                seen = await wait_for_value(http, base, "mbo_sse_records_sent_total",
                                            expected)
                assert seen == expected, (seen, expected)

                # 3. it follows changes
                async with http.get(srv.url + "v1/stream/mbo?from=3000") as r:
                    await r.read()
                expected2 = metrics.sample("mbo_sse_records_sent_total")
                assert expected2 == expected + 2000
                seen = await wait_for_value(http, base, "mbo_sse_records_sent_total",
                                            expected2)
                assert seen == expected2, (seen, expected2)

                # 4. labelled counters and histograms arrive too
                ev = metrics.sample("mbo_sse_events_sent_total", {"stream": "mbo"})
                seen = await wait_for_value(
                    http, base, 'mbo_sse_events_sent_total{stream="mbo"}', ev)
                assert seen == ev
                n = await scraped_value(
                    http, base,
                    'sum(mbo_http_request_duration_seconds_count{endpoint="metrics"})')
                assert n is not None and n >= 1  # Prometheus' own scrapes
                q = await query(http, base, "mbo_book_anomalies")
                assert {s["metric"]["kind"] for s in q} >= {"unknown_cancel"}
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            await srv.stop()
        return err

    asyncio.run(asyncio.wait_for(main(), 130))
