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
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HANG, Mounted, _zombie, needs_fio, needs_mount, wait_for, zswapfs_cmd
from tests.state_pages import keepers_of, unlocked_state_pages
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


@pytest.mark.mount
@needs_mount
@pytest.mark.frontends("native")
@pytest.mark.parametrize("pool", ["zsmalloc", "zbud", "z3fold"])
def test_the_states_pages_stay_locked_between_two_servers(
    mount: Callable[..., Mounted], pool: str
) -> None:
    """Every page of the state is mapped and locked at every instant: in the server; after a
    kill -9, while no server runs (the supervisor held up before it starts the next one), in
    the dead server's keeper; after the takeover, in the new server, which faulted in and
    locked every page it took over (the keeper is reaped then); after a restart too. A page
    left unlocked between two servers can be reclaimed to the swap on this very mount, and the
    next server then deadlocks on it (docs/restart.md, "Between two servers")."""
    m = mount("--size", "64M", "--pool", pool)
    m.expect_errors.append(DIED)
    rnd = random.Random(3)
    data = b"".join(rnd.randbytes(1024) * 4 for _ in range(8192))  # compressible 4:1
    with open(m.image, "r+b") as f:
        f.write(data)
        os.fsync(f.fileno())
    sup, server = m.proc.pid, m.server_pid()
    total, unlocked = unlocked_state_pages(server, sup)
    assert total > len(data) // 4 // 4096 and unlocked == 0, (total, unlocked)
    [keeper] = keepers_of(sup)

    os.kill(sup, signal.SIGSTOP)
    try:
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: _zombie(server), f"server {server} to die")
        assert keepers_of(sup) == [keeper]
        between = unlocked_state_pages(keeper, sup)
    finally:
        os.kill(sup, signal.SIGCONT)
    assert between[0] >= total and between[1] == 0, between

    new = next_server(m, server)
    wait_for(lambda: keepers_of(sup) != [keeper], "the old keeper to be reaped")
    assert len(keepers_of(sup)) == 1
    total, unlocked = unlocked_state_pages(new, sup)
    assert unlocked == 0, (total, unlocked)
    assert re.search(r"took .* over in .* MiB of state locked", m.log_text())  # the server's

    res = run("restart", str(m.mountpoint))
    assert res.returncode == 0, res.stderr
    newer = m.server_pid()
    assert newer != new and unlocked_state_pages(newer, sup)[1] == 0
    assert len(keepers_of(sup)) == 1
    with open(m.image, "rb") as f:
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


class _StuckProcess:
    """A server that SIGKILL does not end: one stuck in the kernel (D state) on something that
    waits for a server, as a takeover faulting in a page of its state from this mount's own
    swap did."""

    pid = 2**22 + 1  # above any pid_max: never a live process's
    returncode = None

    def __init__(self) -> None:
        self.killed = False

    def wait(self, timeout: float | None = None) -> int:
        raise subprocess.TimeoutExpired("zswapfs serve", timeout or 0)

    def kill(self) -> None:
        self.killed = True

    def poll(self) -> None:
        return None


@pytest.mark.unit
def test_a_takeover_stuck_in_the_kernel_ends_the_mount(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new server that does not answer and does not end even killed is not followed by
    another (it would hang the same way): the supervisor aborts the mount's FUSE connection
    (which fails what waits on it and frees the stuck process), lets the state go, and ends
    the mount, with lines saying so. Before, it waited for the killed server for ever."""
    from zswapfs.service import supervisor as sup
    from zswapfs.service.config import MountConfig

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(sup, "connection_of", lambda mp: 42)
    monkeypatch.setattr(sup, "abort_connection", lambda c: calls.append(("abort", c)))
    monkeypatch.setattr(sup, "unmount_lazily", lambda mp: calls.append(("unmount", mp)))
    s = sup.Supervisor(str(tmp_path), MountConfig())
    s.connection = 42
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(4)]
    s.state = sup.State(*fds, None, "00")
    spawned: list[_StuckProcess] = []

    def spawn(takeover: bool) -> sup.Server:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.close()  # it never answers
        spawned.append(_StuckProcess())
        return sup.Server(spawned[-1], ours)  # type: ignore[arg-type]

    monkeypatch.setattr(s, "_spawn", spawn)
    monkeypatch.setattr(s, "_hand_state", lambda server, check: None)
    with caplog.at_level("INFO"):
        s._recover("server 1 died (signal SIGKILL)")
    assert len(spawned) == 1 and spawned[0].killed
    assert calls == [("abort", 42), ("unmount", str(tmp_path))]
    assert s.failed and s.state is None and s._stopping
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert "stuck in the kernel" in caplog.text and "giving" in caplog.text


@pytest.mark.unit
def test_the_control_address_never_asks_the_mount(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The supervisor names its control socket after the mountpoint when its loop starts, by
    which time the first server may already be dead: a stat of the mountpoint would wait for
    ever on the mount (a server killed by ThreadSanitizer at its start hung the supervisor so).
    Only the parent is resolved; the client resolves the same way, so both name one socket."""
    from zswapfs.service.supervisor import control_address

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    mountpoint = tmp_path / "link" / "mnt"
    asked: list[str] = []
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        asked.append(os.fspath(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "stat", lstat)
    address = control_address(str(mountpoint))
    assert str(mountpoint) not in asked and not any(p.endswith("/mnt") for p in asked), asked
    assert address == control_address(str(tmp_path / "real" / "mnt"))
