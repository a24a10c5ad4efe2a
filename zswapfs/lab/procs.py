"""Ending a child process for sure: the one sequence the daemon launcher, the benches, capture
and the tests all use."""

from __future__ import annotations

import os
import subprocess
from typing import Any


def reap(proc: subprocess.Popen[Any], wait: float = 0.0, grace: float = 5.0) -> None:
    """Give *proc* *wait* seconds to exit by itself, then SIGTERM and *grace* seconds, then
    SIGKILL; always reaped on return."""
    try:
        proc.wait(timeout=wait)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_alive(pid: int) -> bool:
    """Is *pid* running (not gone, not a zombie)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
