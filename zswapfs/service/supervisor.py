"""The supervisor: the process that keeps a mount alive while the process serving it dies or is
replaced (docs/restart.md).

A mount's life is in a handful of descriptors: the /dev/fuse session (the mount lives while
any descriptor of it is open; its requests wait in the kernel meanwhile), the three memfds of
the compiled store (engine/native.py's StateFds: page words, pool, arena) and the backing
file. The server (`zswapfs serve`, daemon.serve_supervised) makes them and sends copies here
over a SOCK_SEQPACKET channel (SCM_RIGHTS) with the kernel's FUSE_INIT; the supervisor holds
them and nothing else: no mapping, no thread, no request. When the server dies (kill -9, a
crash, the OOM killer), it starts a new one and hands the descriptors over: the new one checks
them (formats, geometry, identities: TakeoverRefused), rebuilds the pool from the page words,
replays the INIT into libfuse, has the kernel send again what the dead one had read
(FUSE_NOTIFY_RESEND) and serves.

`zswapfs restart MOUNTPOINT` asks for the same with the installed version, in three steps so
that the old one serves until the new one is known to work: the new process checks the state
and says so (a version that cannot read it refuses: one line, and the old one goes on); the
old one stops its loop and background thread and exits with HANDED_OVER, unmounting nothing;
the new one takes over and serves. Requests that arrive meanwhile wait in the kernel's queue.

Control: an abstract Unix socket named after the mountpoint (control_address), which only
root (the supervisor's own uid) may use (SO_PEERCRED), answering one line a request:
"restart" -> "OK pid N" or "ERROR why"; a second restart while one runs is refused.

Between two servers nothing maps the state's pages but the dead server's keeper (csrc/keeper.c:
a process sharing the server's address space, our child, announced by the server's first
message): the rule is that a server's channel, and with it its keeper, is let go (release) only
once the next server answered "ready" (it locked every page of the state in its takeover) or
nobody is left to take over. Otherwise a reclaimer could page the state out to the swap on this
very mount, and the next server would hang faulting it in (docs/restart.md, "Between two
servers"). A server that SIGKILL does not end is stuck in the kernel: no other is started, the
mount's FUSE connection is aborted (fusectl) and the mount given up.

Exits: the server exits 0 when the mount ended (an unmount, or SIGTERM: it unmounts itself);
the supervisor then ends too. SIGTERM, SIGINT or SIGHUP here is passed on to the server. A
server that keeps dying (the config's restart-limit deaths in CRASH_WINDOW seconds: a request
that kills every server it is sent to again) is not restarted again:
the supervisor lets the descriptors go, which ends the mount as a crash without a supervisor
would (the kernel fails what waits), and says so.

Threads: the main loop (signals, children, control connections) and one thread a running
restart; `_lock` is held across any change of which process serves."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from zswapfs.service.config import MountConfig
from zswapfs.service.hardening import harden, sd_notify

log = logging.getLogger(__name__)

#: a server's exit status after it handed the mount over (restart): not a crash
HANDED_OVER = 75
#: a server's exit status when it refused to take a state over: restarting cannot help
REFUSED = 78
#: the window in which the config's restart-limit deaths end the mount (systemd's default
#: StartLimitIntervalSec)
CRASH_WINDOW = 10.0
#: seconds to wait for a server to start, check, hand over or stop (only a hang reaches them)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
#: seconds a killed server may take to end before it is known to be stuck in the kernel
KILL_TIMEOUT = 10.0
#: the largest message on a channel (JSON; the INIT is ~100 bytes)
MESSAGE_MAX = 1 << 16
#: descriptors a state message carries at most: fuse, store, pool, arena, backing
MAX_FDS = 5


def resolved(mountpoint: str) -> str:
    """*mountpoint* as mountinfo names it, resolved up to its parent only: a stat of the
    mountpoint itself is a request to the mount, which waits for ever while no server
    answers."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def control_address(mountpoint: str) -> bytes:
    """The abstract socket of the supervisor of *mountpoint* (no file: nothing to plant)."""
    digest = hashlib.sha256(resolved(mountpoint).encode()).hexdigest()[:32]
    return b"\0zswapfs-supervisor/" + digest.encode()


def peer_uid(sock: socket.socket) -> int:
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(uid)


# -- the channel: one JSON message a packet, descriptors beside ----------------------------------
def send(chan: socket.socket, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    socket.send_fds(chan, [json.dumps(msg).encode()], list(fds))


def recv(chan: socket.socket, timeout: float | None = None) -> tuple[dict[str, Any], list[int]]:
    """The next message and its descriptors; EOFError when the other end is gone,
    TimeoutError when *timeout* passes first."""
    chan.settimeout(timeout)
    try:
        data, fds, _, _ = socket.recv_fds(chan, MESSAGE_MAX, MAX_FDS)
    except (ConnectionResetError, BrokenPipeError):
        raise EOFError from None
    except TimeoutError:
        raise TimeoutError("no answer on the channel") from None
    finally:
        chan.settimeout(None)
    if not data:
        for fd in fds:
            os.close(fd)
        raise EOFError
    return json.loads(data), fds


@dataclass
class State:
    """What the supervisor keeps: the descriptors and the INIT a new server takes over."""

    fuse: int
    store: int
    pool: int
    arena: int
    backing: int | None
    init: str  # hex

    def fds(self) -> list[int]:
        return [self.fuse, self.store, self.pool, self.arena] + (
            [self.backing] if self.backing is not None else []
        )

    def close(self) -> None:
        for fd in self.fds():
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    chan: socket.socket
    started: float = field(default_factory=time.monotonic)
    #: its keeper (csrc/keeper.c), our child too: it holds the server's memory, the state's
    #: pages locked, until the channel is let go (release)
    keeper: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        """Let the server's channel go, and with it its keeper, reaped here: called once a
        server is gone *and* its state is locked by the next one, or nobody is left to take
        it over."""
        self.chan.close()
        keeper, self.keeper = self.keeper, None
        if keeper is not None and parent_of(keeper) == os.getpid():
            # our child, not reaped yet: the pid is still its own
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(keeper, signal.SIGKILL)
                os.waitpid(keeper, 0)


class StartFailed(Exception):
    def __init__(self, why: str, hung: bool = False) -> None:
        super().__init__(why)
        self.hung = hung  # a server that SIGKILL did not end: stuck in the kernel


class Supervisor:
    def __init__(self, mountpoint: str, cfg: MountConfig, verbose: bool = False) -> None:
        self.mountpoint = mountpoint
        self.cfg = cfg
        self.verbose = verbose
        self.state: State | None = None
        self.server: Server | None = None
        self.crashes: deque[float] = deque()
        self.restarts = 0
        self._lock = threading.RLock()  # which process serves
        self._restarting = threading.Lock()
        self._stopping = False
        self.failed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.connection: int | None = None  # the FUSE connection's number (fusectl)

    # -- servers -----------------------------------------------------------------------------
    def _spawn(self, takeover: bool) -> Server:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "zswapfs", "serve", self.mountpoint,
               "--resolved-config", json.dumps(asdict(self.cfg)),
               "--channel-fd", str(theirs.fileno())]  # fmt: skip
        if takeover:
            cmd.append("--takeover")
        if self.verbose:
            cmd.append("--verbose")
        try:
            proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                    stderr=log_stream())  # fmt: skip
        finally:
            theirs.close()
        return Server(proc, ours)

    def _recv(self, server: Server, timeout: float) -> tuple[dict[str, Any], list[int]]:
        """The server's next message but the one naming its keeper (noted on the way)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:  # (a timeout of 0 would make the socket non-blocking instead)
                raise TimeoutError("no answer on the channel")
            msg, fds = recv(server.chan, left)
            if "keeper" not in msg:
                return msg, fds
            for fd in fds:
                os.close(fd)
            server.keeper = int(msg["keeper"])

    def _expect(self, server: Server, key: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The server's next message, which must carry *key*; StartFailed otherwise."""
        try:
            msg, fds = self._recv(server, timeout)
        except (EOFError, TimeoutError, OSError) as exc:
            raise StartFailed(f"server {server.pid} did not answer ({exc or 'it ended'})") from None
        for fd in fds:
            os.close(fd)
        if "refused" in msg:
            raise StartFailed(f"server {server.pid} refused to take over: {msg['refused']}")
        if "error" in msg:
            raise StartFailed(f"server {server.pid}: {msg['error']}")
        if key not in msg:
            raise StartFailed(f"server {server.pid} said {msg} instead of {key}")
        return msg

    def _end(self, server: Server, timeout: float = STOP_TIMEOUT) -> int | None:
        """Wait for *server* to end, killing it after *timeout*: its exit status, or None when
        even SIGKILL did not end it (a process stuck in the kernel, in D state). The channel
        stays open (release)."""
        try:
            return server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("supervisor: server %d did not end; killing it", server.pid)
            server.proc.kill()
        try:
            return server.proc.wait(KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.critical("supervisor: server %d does not end even killed: it is stuck in the "
                         "kernel (%s)", server.pid, wait_channel(server.pid))  # fmt: skip
            return None

    def _hand_state(self, server: Server, check: bool) -> None:
        assert self.state is not None
        send(server.chan, {"takeover": {"init": self.state.init, "check": check}},
             self.state.fds())  # fmt: skip

    def first_start(self) -> None:
        """The first server: it mounts and sends the state. StartFailed (with its reason) if
        the mount could not be made."""
        server = self._spawn(takeover=False)
        try:
            msg, fds = self._recv(server, START_TIMEOUT)
        except (EOFError, TimeoutError) as exc:
            self._end(server, 5)
            server.release()
            why = f"the daemon ended before the mount was live ({exc or 'no state'})"
            raise StartFailed(why) from None
        if "error" in msg or len(fds) < 4:
            for fd in fds:
                os.close(fd)
            self._end(server)
            server.release()
            raise StartFailed(msg.get("error", "the daemon sent no state"))
        backing = fds[4] if len(fds) > 4 else None
        fuse, store, pool, arena = fds[:4]
        self.state = State(fuse, store, pool, arena, backing, msg["state"]["init"])
        self.server = server
        self.connection = connection_of(self.mountpoint)
        log.info("supervisor %d: server %d serves %s", os.getpid(), server.pid, self.mountpoint)

    def _take_over(self, reason: str) -> None:
        """A new server over the state (the old one is gone): started, checked, serving."""
        server = self._spawn(takeover=True)
        try:
            self._hand_state(server, check=False)
            self._expect(server, "ready")
        except (StartFailed, OSError) as exc:
            hung = self._end(server, 10) is None
            server.release()
            raise StartFailed(str(exc), hung) from None
        self.server = server
        self.restarts += 1
        log.info("supervisor: server %d took %s over (%s)", server.pid, self.mountpoint, reason)

    def restart(self) -> str:
        """`zswapfs restart`: the installed version checks, the old one hands over, the new one
        serves. The answer line for the client."""
        if not self._restarting.acquire(blocking=False):
            return "ERROR a restart of this mount is already under way"
        return self._restart_held()

    def _restart_held(self) -> str:
        """restart() with _restarting held (let go here)."""
        try:
            log.info("supervisor: restart asked: the installed zswapfs checks the state")
            with self._lock:
                old = self.server
                if old is None or self.state is None:
                    return "ERROR no server is running"
                new = self._spawn(takeover=True)
                try:
                    self._hand_state(new, check=True)
                    self._expect(new, "checked")
                except (StartFailed, OSError) as exc:
                    self._end(new, 10)
                    new.release()
                    log.error("supervisor: restart refused, server %d goes on serving: %s",
                              old.pid, exc)  # fmt: skip
                    return f"ERROR {exc}; server {old.pid} goes on serving"
                t0 = time.monotonic()
                with contextlib.suppress(OSError):
                    send(old.chan, {"handover": True})
                status = self._end(old)
                if status is not None and status not in (HANDED_OVER, 0) and status >= 0:
                    log.warning("supervisor: server %d ended with %d at the handover", old.pid,
                                status)  # fmt: skip
                self.server = None
                # old's keeper holds the state's pages until new has them (released below)
                try:
                    send(new.chan, {"go": True})
                    self._expect(new, "ready")
                except (StartFailed, OSError) as exc:
                    hung = self._end(new, 10) is None
                    new.release()
                    log.error("supervisor: the new server failed after the handover: %s", exc)
                    self._recover(f"the new server failed after a restart: {exc}", hung)
                    old.release()
                    return f"ERROR {exc}"
                old.release()
                self.server = new
                self.restarts += 1
                stall = time.monotonic() - t0
                log.info("supervisor: restart: server %d took over from %d (%.3f s without a "
                         "server)", new.pid, old.pid, stall)  # fmt: skip
                return f"OK pid {new.pid} (was {old.pid}; {stall:.3f} s without a server)"
        finally:
            self._restarting.release()

    def _recover(self, reason: str, hung: bool = False) -> None:
        """The server is gone unasked: a new one takes over, unless they keep dying or one
        hangs in the kernel (then the next would too: whatever it waits for waits for a
        server)."""
        now = time.monotonic()
        while True:
            self.crashes.append(now)
            while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
                self.crashes.popleft()
            if hung:
                log.critical(
                    "supervisor: a server is stuck in the kernel; giving %s up: the mount ends "
                    "as a crash without a supervisor would (its waiting requests fail)",
                    self.mountpoint,
                )  # fmt: skip
                self._give_up()
                return
            if len(self.crashes) >= self.cfg.restart_limit:
                log.critical(
                    "supervisor: %d servers died in %.0f s; giving %s up: the mount ends as a "
                    "crash without a supervisor would (its waiting requests fail)",
                    len(self.crashes), CRASH_WINDOW, self.mountpoint,
                )  # fmt: skip
                self._give_up()
                return
            try:
                self._take_over(reason)
                return
            except StartFailed as exc:
                log.error("supervisor: %s", exc)
                reason, hung = str(exc), exc.hung
                now = time.monotonic()

    def _abort(self) -> None:
        """Abort this mount's FUSE connection, if the mount there is still the one made."""
        if self.connection is not None and connection_of(self.mountpoint) == self.connection:
            abort_connection(self.connection)

    def _give_up(self) -> None:
        self.server = None
        self.failed = True
        # a process that holds a descriptor of the session (one stuck in the kernel) would
        # keep it, and everything waiting on it, alive: the kernel is told to end it first
        self._abort()
        if self.state is not None:
            self.state.close()  # the last descriptors of the session: the kernel ends it
            self.state = None
        unmount_lazily(self.mountpoint)  # no dead mount left behind
        self._stopping = True
        self._wake()

    # -- the loop ----------------------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGCHLD:
            self._stop_signal = signum
        self._wake()

    def _serve_control(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        try:
            if peer_uid(conn) != os.geteuid():
                conn.sendall(b"ERROR permission denied\n")
                return
            conn.settimeout(5)
            request = conn.recv(256).decode(errors="replace").strip()
        except OSError:
            conn.close()
            return
        if request == "restart":
            # taken here, in the loop, so that a second request is refused from now on
            if not self._restarting.acquire(blocking=False):
                with conn, contextlib.suppress(OSError):
                    conn.sendall(b"ERROR a restart of this mount is already under way\n")
                return

            def work() -> None:
                with conn:
                    answer = self._restart_held()
                    with contextlib.suppress(OSError):
                        conn.sendall(answer.encode() + b"\n")

            threading.Thread(target=work, name="restart", daemon=True).start()
            return
        with conn:
            with contextlib.suppress(OSError):
                conn.sendall(b"ERROR unknown request (known: restart)\n")

    def _check_server(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a restart is changing servers: looked at again on the next turn
        with self._lock:
            self._lock.release()  # the RLock is held once, by the with
            server = self.server
            if server is None or server.proc.poll() is None:
                return
            status = server.proc.returncode
            self.server = None
            if status == 0:
                server.release()
                log.info("supervisor: server %d ended the mount; exiting", server.pid)
                self._stopping = True
                return
            how = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
            if status == REFUSED:
                server.release()
                log.critical("supervisor: server %d refused the state; nothing more to try",
                             server.pid)  # fmt: skip
                self._give_up()
                return
            log.error("supervisor: server %d died (%s); a new one takes %s over", server.pid,
                      how, self.mountpoint)  # fmt: skip
            try:
                self._recover(f"server {server.pid} died ({how})")
            finally:
                server.release()  # its keeper held the state until the next one locked it

    def loop(self) -> int:
        self._stop_signal = 0
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(control_address(self.mountpoint))
            listener.listen(4)
        except OSError as exc:
            log.error("supervisor: no control socket (%s): `zswapfs restart` will not reach "
                      "this mount", exc)  # fmt: skip
            listener.close()
            listener = None  # type: ignore[assignment]
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        if listener is not None:
            sel.register(listener, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in sel.select(timeout=1.0):
                    if key.fileobj is listener:
                        self._serve_control(listener)
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                if self._stop_signal:
                    self.stop(signal.Signals(self._stop_signal).name)
                    break
                self._check_server()
        finally:
            sel.close()
            if listener is not None:
                listener.close()
        return 1 if self.failed else 0

    def stop(self, why: str) -> None:
        """Pass the stop on to the server (it unmounts and flushes), wait for it, let go."""
        with self._lock:
            server = self.server
            if server is not None and server.proc.poll() is None:
                log.info("supervisor: %s: stopping server %d", why, server.pid)
                server.proc.send_signal(signal.SIGTERM)
                if self._end(server) is None:
                    self._abort()
            elif self.state is not None:
                unmount_lazily(self.mountpoint)
            if server is not None:
                server.release()
            self.server = None
            if self.state is not None:
                self.state.close()
                self.state = None
            self._stopping = True


def parent_of(pid: int) -> int | None:
    """The parent of process *pid*, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def log_stream() -> int | None:
    """The descriptor this process logs to when it is a file of its own (`--log`), for the
    servers' stderr, so that their lines land beside the supervisor's; None: stderr, shared
    already."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and stream is not sys.stderr:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                return int(stream.fileno())
    return None


def connection_of(mountpoint: str) -> int | None:
    """The number of the zswapfs FUSE connection mounted at *mountpoint* (its device's minor,
    the name of its directory under /sys/fs/fuse/connections), read from mountinfo without a
    request to the mount; None when there is no such mount."""
    from zswapfs.service.mounts import FSTYPE, mountinfo

    path = resolved(mountpoint)
    found = [e.device for e in mountinfo() if e.mountpoint == path and e.fstype == FSTYPE]
    return int(found[-1].split(":")[1]) if found else None


def abort_connection(connection: int | None) -> None:
    """End FUSE connection *connection* whatever holds it open (fusectl's abort: every request
    waiting on it fails at once), mounting fusectl for the moment if it is not mounted."""
    if connection is None:
        return
    import ctypes

    root = "/sys/fs/fuse/connections"
    libc = ctypes.CDLL(None, use_errno=True)
    mounted = False
    if not os.path.exists(f"{root}/{connection}") and os.path.isdir(root):
        mounted = libc.mount(b"fusectl", root.encode(), b"fusectl", 0, None) == 0
    try:
        with open(f"{root}/{connection}/abort", "w") as f:
            f.write("1")
        log.critical("supervisor: FUSE connection %d aborted", connection)
    except OSError as exc:
        log.error("supervisor: cannot abort FUSE connection %d: %s", connection, exc)
    finally:
        if mounted:
            libc.umount2(root.encode(), 0)


def wait_channel(pid: int) -> str:
    """Where process *pid* waits in the kernel (its wchan), for a log line."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return f"waiting in {f.read().strip() or '?'}"
    except OSError:
        return "gone"


def unmount_lazily(mountpoint: str) -> None:
    """umount2(MNT_DETACH), as libfuse does as root; a mount already gone is not an error."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), 2) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not mounted; ENOENT
            log.warning("unmounting %s: %s", mountpoint, os.strerror(err))


def run(mountpoint: str, cfg: MountConfig, ready_fd: int | None, verbose: bool = False) -> int:
    """`zswapfs mount` with a supervisor: start the first server, report the mount live, then
    keep it alive until it ends. Raises StartFailed when the mount could not be made."""
    from zswapfs.service.daemon import MountError

    harden(lock_memory=cfg.lock_memory)  # never swapped out, never the OOM killer's choice
    sup = Supervisor(mountpoint, cfg, verbose)
    try:
        sup.first_start()
    except StartFailed as exc:
        raise MountError(str(exc)) from None
    assert sup.server is not None
    if ready_fd is not None:
        os.write(ready_fd, b"READY\n")
        os.close(ready_fd)
    sd_notify(f"READY=1\nSTATUS=serving {mountpoint}\nMAINPID={os.getpid()}")
    status = sup.loop()
    sd_notify("STOPPING=1")
    return status


def request_restart(mountpoint: str, timeout: float = 3 * START_TIMEOUT) -> str:
    """Ask the supervisor of *mountpoint* to restart its server; its answer line. OSError when
    no supervisor answers (an unsupervised mount, or none)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(control_address(mountpoint))
        if peer_uid(sock) != os.geteuid():
            raise PermissionError(f"the control socket of {mountpoint} is not a supervisor's")
        sock.sendall(b"restart\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode(errors="replace").strip() or "ERROR the supervisor gave no answer"
