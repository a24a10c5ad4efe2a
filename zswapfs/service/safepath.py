"""Opening files safely as root: log files, their directory, and the directories of the backing
file and the config file.

The daemon runs as root and takes paths from the command line and from TOML files. A path that
runs through a directory another user can write to lets that user put a symbolic link, a FIFO or
a file of their own where the daemon expects its file, and so make root append to /etc/shadow,
read the log, or hang at start. So, here:

  * a directory on the way to a file zswapfs writes (each level up to /) must be owned by root
    (or by the user zswapfs runs as) and writable by nobody else, unless it has the sticky bit
    (as /tmp); in a sticky directory the file itself must be ours.
  * a file is opened with O_NOFOLLOW (a symbolic link is refused, not followed), O_NONBLOCK (a
    FIFO cannot block the open) and O_CLOEXEC, and checked after opening with fstat: a regular
    file, ours, one link (a hard link to someone else's file is refused), the same inode lstat saw.
  * a directory zswapfs creates is made 0700 and checked with lstat afterwards.

Every refusal is an UnsafePath whose message is one line naming the path and saying what to do.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from pathlib import Path

#: where a root daemon started by `zswapfs mount` logs, one file per mountpoint. Under /var/log
#: (not /run) so the log of a daemon that died survives a reboot; root-owned and 0700 so no
#: other user can plant, read or replace a file in it.
ROOT_LOG_DIR = Path("/var/log/zswapfs")


class UnsafePath(Exception):
    """A path zswapfs refuses to use; the message is one line for the user."""


def _who(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def check_directory(path: str | os.PathLike[str], what: str) -> None:
    """Refuse if *path* (a directory) or any directory above it can be changed by another user:
    owned by someone other than root or us, or writable by group or others without the sticky
    bit. Checks both the path as given (each component with lstat, so a symbolic link's own
    directory counts) and the directories it resolves to."""
    given = Path(os.path.abspath(path))
    chains = [given, *given.parents]
    real = Path(os.path.realpath(given))
    if real != given:
        chains += [real, *real.parents]
    seen: set[Path] = set()
    for d in chains:
        if d in seen:
            continue
        seen.add(d)
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            continue  # a missing level is created later (ensure_directory), 0700
        except OSError as exc:
            raise UnsafePath(f"{what}: cannot check directory {d}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            continue  # its target is in the resolved chain; its own directory is checked
        if not _trusted_owner(st.st_uid):
            raise UnsafePath(
                f"{what}: directory {d} is owned by {_who(st.st_uid)}, who could replace what "
                f"zswapfs opens there; use a directory owned by {_who(os.geteuid())}"
            )
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not st.st_mode & stat.S_ISVTX:
            by = {stat.S_IWGRP: "its group", stat.S_IWOTH: "others"}.get(writable, "all")
            raise UnsafePath(
                f"{what}: directory {d} is writable by {by} (mode "
                f"{stat.S_IMODE(st.st_mode):04o}) without the sticky bit, so another user could "
                f"replace the file; run chmod go-w {d} or choose another directory"
            )


def check_owned_file(st: os.stat_result, path: str, what: str) -> None:
    """An existing file zswapfs writes must be a regular file of ours with a single link."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(
            f"{what} {path} is a symbolic link: zswapfs does not follow links here; "
            "give the path of the file itself"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{what} {path} is not a regular file; give the path of a regular file")
    if st.st_uid != os.geteuid():
        raise UnsafePath(
            f"{what} {path} is owned by {_who(st.st_uid)}, not {_who(os.geteuid())}; "
            "remove it or choose another path"
        )
    if st.st_nlink != 1:
        raise UnsafePath(
            f"{what} {path} has {st.st_nlink} hard links, so it may be another file under a "
            "second name; remove it or choose another path"
        )


def open_append(path: str, what: str = "log file") -> int:
    """Open (or create, 0600) *path* for appending, safely; returns the descriptor."""
    path = os.path.abspath(path)
    check_directory(os.path.dirname(path), f"{what} {path}")
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        before: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        before = None
    except OSError as exc:
        raise UnsafePath(f"cannot open {what} {path}: {exc.strerror}") from None
    if before is not None:
        check_owned_file(before, path, what)  # before opening: never open a FIFO or a device
    try:
        if before is None:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            fd = os.open(path, flags)
    except FileExistsError:
        raise UnsafePath(f"{what} {path} appeared while zswapfs was creating it; retry") from None
    except OSError as exc:
        raise UnsafePath(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        check_owned_file(st, path, what)
        if before is not None and (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafePath(f"{what} {path} was replaced while zswapfs opened it; retry")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_directory(path: str | os.PathLike[str], what: str) -> list[str]:
    """Create each missing level of *path* with mode 0700, then check the whole chain; returns
    the directories created (for the log)."""
    target = Path(os.path.abspath(path))
    missing = []
    for d in [target, *target.parents]:
        if os.path.lexists(d):
            break
        missing.append(d)
    check_directory(target, what)  # the existing levels, before anything is made under them
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass  # made meanwhile by someone: the check below decides whether it will do
        except OSError as exc:
            raise UnsafePath(f"{what}: cannot create directory {d}: {exc.strerror}") from None
        else:
            created.append(str(d))
        own_directory(d, what, tighten=str(d) in created)
    check_directory(target, what)
    return created


def own_directory(d: str | os.PathLike[str], what: str, tighten: bool = True) -> None:
    """*d* must be a real directory (not a link) of ours; with *tighten*, made 0700."""
    try:
        st = os.lstat(d)
    except OSError as exc:
        raise UnsafePath(f"{what}: cannot check directory {d}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what}: {d} is not a directory (a symbolic link or a file); remove it")
    if st.st_uid != os.geteuid():
        raise UnsafePath(
            f"{what}: directory {d} is owned by {_who(st.st_uid)}, not {_who(os.geteuid())}; "
            "remove it or choose another path"
        )
    if tighten and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700, follow_symlinks=False)


def log_directory() -> Path:
    """The directory for daemon logs: /var/log/zswapfs for root; for another user their own
    state directory ($XDG_STATE_HOME/zswapfs, default ~/.local/state/zswapfs)."""
    if os.geteuid() == 0:
        return ROOT_LOG_DIR
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "zswapfs"


def default_log(mountpoint: str) -> str:
    """The log file of the daemon serving *mountpoint*; its directory is created (0700) and
    checked, and made 0700 if it was wider (e.g. created by a packager with 0755)."""
    directory = log_directory()
    ensure_directory(directory, "log directory")
    own_directory(directory, "log directory", tighten=True)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.abspath(mountpoint)).strip("_") or "root"
    return str(directory / f"{tag}.log")


def stderr_is_journal() -> bool:
    """True when stderr is systemd's journal stream (JOURNAL_STREAM names its device:inode, as
    systemd.exec(5) describes), so a daemon should log there instead of to a file."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))
