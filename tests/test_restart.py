"""A mount that outlives the process serving it (docs/restart.md): kill -9 of the server under
fio's verifying writes, 50 times, and live restarts (`zswapfs restart`) among them; the
refusals (a second restart while one runs, a state of a format the new process does not read,
an unsupervised mount, a stale or foreign session descriptor); the supervisor giving a
mount up that keeps killing its servers; a stop through the supervisor unmounting and
flushing. The swap under a real program across a kill and a restart is in test_swap.py."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import HANG, Mounted, needs_fio, needs_mount, wait_for, zswapfs_cmd
from zswapfs.engine.native import TakeoverRefused
from zswapfs.service.daemon import check_session_fd

DIED = "died (signal SIGKILL)"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(zswapfs_cmd(*args), capture_output=True, text=True, timeout=HANG)


def next_server(m: Mounted, old: int) -> int:
    """The pid of the server that took over from *old* (stats are served by it)."""
    pid = [old]
    wait_for(lambda: pid.__setitem__(0, m.server_pid()) or pid[0] != old, f"a server after {old}")
    return pid[0]


def limit_config(tmp_path: Path, limit: int) -> str:
    path = tmp_path / f"limit{limit}.toml"
    path.write_text(f"restart-limit = {limit}\n")
    return str(path)


def fio_verify(image: Path, seed: int) -> list[str]:
    """One fio job over the image: random 4 KiB writes at queue depth 8, each block checked
    (crc32c) against what was written, backlogged and at the end; fails at the first wrong
    block."""
    return ["fio", "--name=verify", f"--filename={image}", "--rw=randwrite", "--bs=4k",
            "--size=24M", "--ioengine=libaio", "--iodepth=8", "--direct=1",
            "--verify=crc32c", "--verify_backlog=512", "--verify_fatal=1", "--do_verify=1",
            "--verify_state_save=0", f"--randseed={seed}", "--output-format=terse"]  # fmt: skip


@pytest.mark.mount
@needs_mount
@needs_fio
@pytest.mark.frontends("native")
def test_fifty_kills_and_restarts_under_fio_lose_nothing(
    mount: Callable[..., Mounted], tmp_path: Path
) -> None:
    """fio writes and verifies the image without a pause while the server is killed (-9) 50
    times at random instants and restarted live 5 times: every fio run ends with every block
    as written, and no request failed."""
    m = mount("--size", "32M", "--config", limit_config(tmp_path, 1000))
    m.expect_errors.append(DIED)
    stop = threading.Event()
    runs: list[subprocess.CompletedProcess[str]] = []

    def keep_verifying() -> None:
        seed = 1
        while not stop.is_set():
            runs.append(subprocess.run(fio_verify(m.image, seed), capture_output=True, text=True,
                                       timeout=HANG))  # fmt: skip
            seed += 1

    worker = threading.Thread(target=keep_verifying)
    worker.start()
    rnd = random.Random(50)
    pid = m.server_pid()
    kills = restarts = 0
    try:
        while kills < 50:
            stop.wait(rnd.uniform(0.05, 0.6))  # a random instant of the load (not measured)
            if kills % 10 == 5 and restarts < 5:
                res = run("restart", str(m.mountpoint))
                assert res.returncode == 0, res.stderr
                restarts += 1
            else:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            pid = next_server(m, pid)
    finally:
        stop.set()
        worker.join(HANG)
    assert len(runs) >= 2, "fio did not run across the kills"
    bad = [r for r in runs if r.returncode != 0]
    assert not bad, bad[0].stdout + bad[0].stderr
    st = m.stats()
    assert st["takeovers"] == kills + restarts == 55
    assert st["failed_reads"] == st["failed_writes"] == 0
    assert st["supervisor_pid"] == m.proc.pid and m.proc.poll() is None


@pytest.mark.mount
@needs_mount
@pytest.mark.frontends("native")
def test_restart_refusals_leave_the_server_serving(mount: Callable[..., Mounted]) -> None:
    """A second restart while one runs, and a new process that cannot read the state (here a
    format number from the future in the store's header), are refused with one line; the
    server that was serving goes on, with every page."""
    m = mount("--size", "16M")
    data = random.Random(1).randbytes(4 << 20)
    with open(m.image, "r+b") as f:
        f.write(data)
    server = m.server_pid()

    # the store's region, reached through the server's descriptors
    region = next(
        f"/proc/{server}/fd/{fd}" for fd in os.listdir(f"/proc/{server}/fd")
        if "zswapfs-store" in os.readlink(f"/proc/{server}/fd/{fd}")
    )  # fmt: skip
    with open(region, "r+b", buffering=0) as f:
        fmt = os.pread(f.fileno(), 4, 8)
        os.pwrite(f.fileno(), (99).to_bytes(4, "little"), 8)
        res = run("restart", str(m.mountpoint))
        os.pwrite(f.fileno(), fmt, 8)
    assert res.returncode == 1
    assert "format 99" in res.stderr and "goes on serving" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert m.server_pid() == server
    m.expect_errors += ["refusing to take", "restart refused"]

    # a restart held up (the old server stopped: it cannot hand over yet), and a second one
    os.kill(server, signal.SIGSTOP)
    first = subprocess.Popen(zswapfs_cmd("restart", str(m.mountpoint)), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        asked = "restart asked"
        wait_for(lambda: m.log_text().count(asked) >= 2, "the first restart under way")
        second = run("restart", str(m.mountpoint))
    finally:
        os.kill(server, signal.SIGCONT)
    out, err = first.communicate(timeout=HANG)
    assert second.returncode == 1 and "already under way" in second.stderr, second.stderr
    assert first.returncode == 0, err
    assert m.server_pid() != server
    with open(m.image, "rb") as f:
        assert f.read(len(data)) == data


@pytest.mark.mount
@needs_mount
def test_restart_needs_a_supervised_mount(mount: Callable[..., Mounted], frontend: str) -> None:
    m = mount("--size", "8M", *(["--no-supervise"] if frontend == "native" else []))
    assert m.stats()["supervisor_pid"] is None
    res = run("restart", str(m.mountpoint))
    assert res.returncode == 1 and "without a supervisor" in res.stderr, res.stderr


@pytest.mark.mount
@needs_mount
@pytest.mark.frontends("native")
def test_a_server_that_keeps_dying_ends_the_mount(mount: Callable[..., Mounted]) -> None:
    """restart-limit (5) servers dead within 10 s: the supervisor lets the mount go, with a
    line saying why, and leaves no dead mount behind."""
    m = mount("--size", "8M")
    m.expect_errors.append(DIED)
    pid = m.server_pid()
    for i in range(5):
        os.kill(pid, signal.SIGKILL)
        if i < 4:
            pid = next_server(m, pid)
    assert m.proc.wait(HANG) == 1
    assert not os.path.ismount(m.mountpoint)
    assert re.search(r"CRITICAL .*5 servers died in 10 s; giving .* up", m.log_text())


@pytest.mark.mount
@needs_mount
@pytest.mark.frontends("native")
def test_a_stop_through_the_supervisor_unmounts_and_flushes(
    mount: Callable[..., Mounted], tmp_path: Path
) -> None:
    """SIGTERM to the supervisor (systemctl stop): the server unmounts and flushes the image to
    its backing file, both exit 0; also after a takeover."""
    backing = tmp_path / "image.img"
    m = mount("--size", "8M", "--mode", "image", "--backing", str(backing))
    m.expect_errors.append(DIED)
    data = random.Random(2).randbytes(2 << 20)
    with open(m.image, "r+b") as f:
        f.write(data)
    server = m.server_pid()
    os.kill(server, signal.SIGKILL)  # unflushed pages go over with the pool
    next_server(m, server)
    m.proc.terminate()
    assert m.proc.wait(HANG) == 0
    assert not os.path.ismount(m.mountpoint)
    with open(backing, "rb") as f:
        assert f.read(len(data)) == data


@pytest.mark.unit
def test_a_session_descriptor_is_checked(tmp_path: Path) -> None:
    """What a new server is handed as the /dev/fuse session: not a FUSE descriptor, or one
    whose connection is gone (never mounted: stale), is refused with one line."""
    r, w = os.pipe()
    try:
        with pytest.raises(TakeoverRefused, match="not a /dev/fuse session"):
            check_session_fd(r, str(tmp_path))
    finally:
        os.close(r)
        os.close(w)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")
    fd = os.open("/dev/fuse", os.O_RDWR)
    try:
        with pytest.raises(TakeoverRefused, match="no longer connected"):
            check_session_fd(fd, str(tmp_path))
    finally:
        os.close(fd)
