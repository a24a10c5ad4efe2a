"""`zswapfs list` / `status`: mounts from mountinfo, loop devices from sysfs, /proc/swaps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mounted, needs_mount, swap_unavailable, zswapfs_cmd
from zswapfs.cli import CliError, listing
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.service import mounts


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(zswapfs_cmd(*args), capture_output=True, text=True, timeout=120)


# -- unit: the kernel's files, prepared ----------------------------------------------------------
MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
42 27 0:39 / /run/zswapfs/swap0 rw,nosuid,relatime shared:7 - fuse.zswapfs zswapfs rw,user_id=0
43 27 0:40 / /tmp/with\\040space rw,nosuid,nodev,relatime - fuse.zswapfs zswapfs rw,user_id=0
44 27 0:41 / /tmp/null rw,nosuid,nodev,relatime - fuse zswapfs-null rw,user_id=0
45 27 0:42 / /tmp/other rw - fuse.sshfs zswapfs rw
"""
SWAPS = """\
Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/loop3                              partition\t1048572\t\t2048\t\t100
/swap\\040file                           file\t\t1024\t\t0\t\t-2
"""


@pytest.mark.unit
def test_mountinfo_finds_zswapfs_mounts_only(tmp_path: Path) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    assert mounts.zswapfs_mounts(str(path)) == ["/run/zswapfs/swap0", "/tmp/with space"]


@pytest.mark.unit
def test_loop_devices_and_swaps(tmp_path: Path) -> None:
    for name, backing in (
        ("loop0", "/run/zswapfs/swap0/swap.img\n"),
        ("loop1", None),
        ("loop2", "/tmp/old.img (deleted)\n"),
    ):
        (tmp_path / name).mkdir()
        if backing is not None:
            (tmp_path / name / "loop").mkdir()
            (tmp_path / name / "loop" / "backing_file").write_text(backing)
    assert mounts.loop_devices(str(tmp_path)) == {
        "/dev/loop0": "/run/zswapfs/swap0/swap.img",
        "/dev/loop2": "/tmp/old.img",
    }
    swaps_file = tmp_path / "swaps"
    swaps_file.write_text(SWAPS)
    got = mounts.swaps(str(swaps_file))
    assert got["/dev/loop3"] == mounts.SwapArea(
        "/dev/loop3", "partition", 1048572 * 1024, 2048 * 1024, 100
    )
    assert got["/swap file"].priority == -2


def fake_row(**stats: Any) -> dict[str, Any]:
    st = {
        "image": "/m/swap.img",
        "disksize": 1 << 30,
        "codec": "lz4",
        "pool": "zsmalloc",
        "mode": "swap",
        "pid": 9,
        "stored_pages": 3000,
        "orig_data_size": 3000 * PAGE_SIZE,
        "compr_data_size": 5_000_000,
        "mem_used_total": 5 << 20,
        "mem_limit": 0,
        "mem_used_max": 6 << 20,
        "same_pages": 10,
        "huge_pages": 1,
        "backing": None,
        "bd_count": 0,
        **stats,
    }
    return {
        "mountpoint": "/m",
        "stats": st,
        "error": None,
        "loops": ["/dev/loop3"],
        "swap": mounts.SwapArea("/dev/loop3", "partition", 1 << 30, 8192, 100),
    }


@pytest.mark.unit
def test_table_is_aligned_with_human_sizes() -> None:
    rows = [fake_row(), fake_row(backing="/var/lib/b.img", bd_count=256, mem_used_total=0)]
    rows[1]["mountpoint"] = "/run/zswapfs/longer"
    rows[1]["loops"], rows[1]["swap"] = [], None
    rows.append(
        {
            "mountpoint": "/dead",
            "stats": None,
            "error": "stats unreadable: x",
            "loops": [],
            "swap": None,
        }
    )
    text = listing.format_table(rows, listing.choose_columns(None), raw_bytes=False)
    lines = text.splitlines()
    assert lines[0].split() == list(listing.DEFAULT_COLUMNS)
    assert lines[1].split() == [
        "/m",
        "1G",
        "lz4",
        "zsmalloc",
        "3000",
        "11.7M",
        "4.8M",
        "5M",
        "2.34",
        "-",
        "-",
        "/dev/loop3",
        "100",
    ]
    assert lines[2].split()[-5:] == ["-", "/var/lib/b.img", "1M", "-", "-"]
    assert lines[3].split() == ["/dead"] + ["?"] * 10 + ["-", "-"]
    # aligned: every column starts at the same offset on every line
    starts = [line.index("lz4") if "lz4" in line else None for line in lines[1:3]]
    assert starts[0] == starts[1] == lines[0].index("CODEC")
    assert len({len(line) for line in lines[:3]}) == 1  # right-aligned PRIO ends the line
    raw = listing.format_table(rows[:1], listing.choose_columns("size,data"), raw_bytes=True)
    assert raw.splitlines()[1].split() == [str(1 << 30), str(3000 * PAGE_SIZE)]


@pytest.mark.unit
def test_columns_and_json() -> None:
    cols = listing.choose_columns("+pid,swap-used")
    assert [c.header for c in cols][-2:] == ["PID", "SWAP-USED"]
    with pytest.raises(CliError, match="unknown column 'NOPE'"):
        listing.choose_columns("mountpoint,nope")
    doc = json.loads(listing.as_json([fake_row()], listing.choose_columns("mountpoint,ratio,prio")))
    assert doc == {"mounts": [{"mountpoint": "/m", "ratio": 2.34, "prio": 100, "error": None}]}
    assert listing.human(0) == "0B" and listing.human(1536) == "1.5K"
    assert listing.human(3 << 30) == "3G"


# -- mount: real daemons -------------------------------------------------------------------------
def write_pages(m: Mounted, pages: int, random: bool = False) -> None:
    with open(m.image, "r+b") as f:
        for i in range(pages):
            page = os.urandom(PAGE_SIZE) if random else ((b"list %d " % i) * 700)[:PAGE_SIZE]
            f.write(page)


@pytest.mark.mount
@needs_mount
def test_list_shows_every_mount_from_its_stats(
    mount: Callable[..., Mounted], tmp_path: Path
) -> None:
    a = mount("--size", "16M")
    b = mount(
        "--size",
        "min(ram / 2, 32M)",
        "--codec",
        "zstd:1",
        "--pool",
        "zbud",
        "--backing",
        str(tmp_path / "b.backing"),
        "--mem-limit",
        "256K",
    )
    write_pages(a, 100)
    write_pages(b, 200, random=True)
    res = run(
        "list",
        "--json",
        "-o",
        "mountpoint,size,codec,pool,pages,data,total,backing,bd-used,loop,prio",
    )
    assert res.returncode == 0, res.stderr
    rows = {r["mountpoint"]: r for r in json.loads(res.stdout)["mounts"]}
    for m in (a, b):
        st = m.stats()
        r = rows[str(m.mountpoint)]
        assert r["error"] is None and r["loop"] is None and r["prio"] is None
        assert (r["size"], r["codec"], r["pool"], r["pages"], r["data"], r["total"]) == (
            st["disksize"],
            st["codec"],
            st["pool"],
            st["stored_pages"],
            st["orig_data_size"],
            st["mem_used_total"],
        )
    assert rows[str(a.mountpoint)]["pages"] == 100 and rows[str(a.mountpoint)]["backing"] is None
    assert rows[str(b.mountpoint)]["size"] == 32 << 20
    assert rows[str(b.mountpoint)]["backing"] == str(tmp_path / "b.backing")
    assert rows[str(b.mountpoint)]["bd-used"] == b.stats()["bd_count"] * PAGE_SIZE > 0

    table = run("status", str(a.mountpoint), str(b.mountpoint))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == list(listing.DEFAULT_COLUMNS)
    assert [line.split()[0] for line in lines[1:]] == [str(a.mountpoint), str(b.mountpoint)]
    assert lines[1].split()[1:5] == ["16M", "lz4", "zsmalloc", "100"]
    assert lines[2].split()[1:4] == ["32M", "zstd:1", "zbud"]

    res = run("list", str(tmp_path))
    assert res.returncode == 1 and "is not a zswapfs mount" in res.stderr


@pytest.mark.mount
@needs_mount
def test_unreadable_stats_show_a_marker(mount: Callable[..., Mounted]) -> None:
    stopped = mount("--size", "8M")
    dead = mount("--size", "8M")
    dead.kill_all()
    server = stopped.server_pid()
    os.kill(server, signal.SIGSTOP)
    try:
        res = run(
            "list", "-o", "mountpoint,size,codec", str(stopped.mountpoint), str(dead.mountpoint)
        )
    finally:
        os.kill(server, signal.SIGCONT)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout.splitlines()[1].split() == [str(stopped.mountpoint), "?", "?"]
    assert res.stdout.splitlines()[2].split() == [str(dead.mountpoint), "?", "?"]
    assert f"{stopped.mountpoint}: stats unreadable: no answer within" in res.stderr
    assert f"{dead.mountpoint}: stats unreadable: Transport endpoint is not connected" in res.stderr
    doc = json.loads(run("list", "--json", str(dead.mountpoint)).stdout)
    assert doc["mounts"][0]["size"] is None and "not connected" in doc["mounts"][0]["error"]


# -- system: a loop device and swap --------------------------------------------------------------
@pytest.fixture
def swap_config(tmp_path: Path) -> Iterator[Path]:
    config = tmp_path / "ops.toml"
    mp = tmp_path / "mnt"
    config.write_text(f'size = "64M"\nmountpoint = "{mp}"\nswap-priority = 7\n')
    yield config
    run("swapoff", "--config", str(config))
    if os.path.ismount(mp):  # swapoff failed: take everything down by hand
        out = subprocess.run(
            ["losetup", "-j", str(mp / "swap.img")], capture_output=True, text=True
        ).stdout
        for dev in [line.split(":")[0] for line in out.splitlines() if line.strip()]:
            subprocess.run(["swapoff", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


@pytest.mark.system
@pytest.mark.skipif(
    swap_unavailable(cgroups=False) is not None, reason=str(swap_unavailable(cgroups=False))
)
def test_list_shows_loop_device_and_swap_priority(swap_config: Path, tmp_path: Path) -> None:
    res = run("swapon", "--config", str(swap_config))
    assert res.returncode == 0, res.stderr
    mp = tmp_path / "mnt"
    dev = res.stdout.split(" on ")[1].split(",")[0]
    assert mounts.swaps()[dev].priority == 7
    doc = json.loads(run("list", "--json", "-o", "mountpoint,loop,prio,swap-used", str(mp)).stdout)
    assert doc["mounts"] == [
        {
            "mountpoint": str(mp),
            "loop": dev,
            "prio": 7,
            "swap-used": mounts.swaps()[dev].used_bytes,
            "error": None,
        }
    ]
    res = run("swapoff", "--config", str(swap_config), "--keep-mount")
    assert res.returncode == 0, res.stderr
    doc = json.loads(run("list", "--json", "-o", "loop,prio", str(mp)).stdout)
    assert doc["mounts"] == [{"loop": None, "prio": None, "error": None}]
