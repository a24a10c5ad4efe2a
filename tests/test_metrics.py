"""Prometheus metrics: `zswapfs stats --prometheus` and the daemon's --metrics-port endpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Mounted, needs_mount, stop_daemon, zswapfs_cmd
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.service import daemon, metrics
from zswapfs.service.config import MountConfig

#: figures that move on their own between two reads of an idle mount (reading the stats is a
#: request the native frontend serves in Python)
VOLATILE = {"rss_bytes", "requests_in_python"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the Prometheus text format."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def figures(st: dict[str, Any]) -> Iterator[tuple[str | None, str, float]]:
    """Every numeric figure of a stats snapshot: (section, key, value)."""
    for section in (None, "pool_stats", "maintenance"):
        data = st if section is None else st[section]
        for key, value in data.items():
            if isinstance(value, int | float) and key not in metrics.NOT_FIGURES:
                yield section, key, float(value)


def check_matches(text: str, *snapshots: dict[str, Any]) -> int:
    """Every figure of the stats is in *text* with a value one of the snapshots had; returns
    how many were checked."""
    got = samples(text)
    mp = (("mountpoint", snapshots[0]["mountpoint"]),)
    checked = 0
    for section, key, _ in figures(snapshots[0]):
        name = metrics.metric_name(section, key)
        assert (name, mp) in got, f"{section}.{key} is not exported as {name}"
        if key in VOLATILE:
            continue
        seen = [float((st if section is None else st[section])[key]) for st in snapshots]
        assert got[(name, mp)] in seen, f"{name} = {got[(name, mp)]}, stats had {seen}"
        checked += 1
    for row in snapshots[0]["pool_stats"].get("classes", []):
        labels = tuple(sorted({**dict(mp), "class_size": str(row["class_size"])}.items()))
        assert got[("zswapfs_pool_class_used_objects", labels)] == row["obj_used"]
    return checked


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


# -- unit: the collector over a real store's stats -----------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("pool", ["zsmalloc", "zbud"])
def test_every_figure_is_exported_with_its_value(pool: str) -> None:
    store = daemon.build(MountConfig(size=1 << 20, pool=pool))
    try:
        for pn in range(40):
            store.write_page(pn, ((b"page %d " % pn) * 600)[: PAGE_SIZE - 100] + os.urandom(100))
        store.write_page(50, bytes(PAGE_SIZE))
        st = {**store.stats(), "mountpoint": "/run/zswapfs/a b", "pid": 1, "rss_bytes": 7}
    finally:
        store.pool.close()
    st["maintenance"] = {"runs": 3, "seconds": 0.25, "aggressive": False}
    text = metrics.render(st)
    assert check_matches(text, st) >= 30
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["zswapfs_failed_reads"].type == "counter"
    assert fams["zswapfs_stored_pages"].type == "gauge"
    info = fams["zswapfs_info"].samples[0]
    assert info.name == "zswapfs_info" and info.value == 1
    assert info.labels == {
        "mountpoint": "/run/zswapfs/a b",
        "codec": "lz4",
        "pool": pool,
        "mode": "swap",
        "backing": "",
        "image": "",
        "engine": "native",
        "frontend": "",
    }
    for fam in fams.values():
        assert fam.name.startswith("zswapfs")
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples)


@pytest.mark.unit
def test_unknown_figures_are_still_exported() -> None:
    st = {
        "mountpoint": "/m",
        "codec": "lz4",
        "stored_pages": 3,
        "new_figure": 12,
        "pool_stats": {"odd-key": 2.5},
        "maintenance": {},
    }
    got = samples(metrics.render(st))
    assert got[("zswapfs_new_figure", (("mountpoint", "/m"),))] == 12
    assert got[("zswapfs_pool_odd_key", (("mountpoint", "/m"),))] == 2.5
    assert got[("zswapfs_stored_pages", (("mountpoint", "/m"),))] == 3


@pytest.mark.unit
def test_server_serves_on_scrape_and_stops() -> None:
    calls = []

    def source() -> dict[str, Any]:
        calls.append(1)
        return {"mountpoint": "/m", "stored_pages": len(calls)}

    server = metrics.MetricsServer(source, "127.0.0.1", 0)
    port = server.httpd.server_address[1]
    assert calls == []  # nothing is computed before a scrape
    server.start()
    try:
        assert samples(scrape(port))[("zswapfs_stored_pages", (("mountpoint", "/m"),))] == 1
        assert samples(scrape(port))[("zswapfs_stored_pages", (("mountpoint", "/m"),))] == 2
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    with pytest.raises(metrics.MetricsError, match="cannot listen on 127.0.0.1:"):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            metrics.MetricsServer(source, "127.0.0.1", taken.getsockname()[1])


# -- mount: the daemon's endpoint and the CLI ----------------------------------------------------
def write_some(m: Mounted) -> None:
    with open(m.image, "r+b") as f:
        for i in range(64):
            f.write(((b"zswapfs %d " % i) * 500)[: PAGE_SIZE - 300] + os.urandom(300))
        f.write(bytes(8 * PAGE_SIZE))
        f.write(os.urandom(4 * PAGE_SIZE))


@pytest.mark.mount
@needs_mount
def test_metrics_port_matches_the_stats_file(mount: Callable[..., Mounted]) -> None:
    port = free_port()
    m = mount("--size", "16M", "--metrics-port", str(port), "--maintenance-interval", "3600")
    write_some(m)
    before = m.stats()
    text = scrape(port)
    after = m.stats()
    assert before["stored_pages"] == 76 and before["same_pages"] == 8
    assert check_matches(text, before, after) >= 30
    promcli = subprocess.run(
        zswapfs_cmd("stats", "--prometheus", str(m.mountpoint)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert promcli.returncode == 0, promcli.stderr
    assert check_matches(promcli.stdout, after, m.stats()) >= 30
    m.proc.terminate()
    assert m.proc.wait(timeout=30) == 0
    with pytest.raises(urllib.error.URLError):
        scrape(port)  # unmounting stopped the server


@pytest.mark.mount
@needs_mount
def test_metrics_port_taken_fails_the_mount(tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run(
            zswapfs_cmd(
                "mount",
                str(mp),
                "--size",
                "8M",
                "--metrics-port",
                str(port),
                "--log",
                str(tmp_path / "log"),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    try:
        assert res.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in res.stderr
        assert "Traceback" not in res.stderr
        assert not os.path.ismount(mp)
    finally:
        stop_daemon(mp, None)


@pytest.mark.mount
@needs_mount
def test_metrics_keys_in_toml(mount: Callable[..., Mounted], tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "m.toml"
    config.write_text(f'size = "8M"\nmetrics-port = {port}\nmetrics-address = "127.0.0.1"\n')
    m = mount("--config", str(config))
    got = samples(scrape(port))
    assert got[("zswapfs_disksize_bytes", (("mountpoint", str(m.mountpoint)),))] == 8 << 20
    st = json.loads((m.mountpoint / "stats").read_text())
    assert st["disksize"] == 8 << 20
