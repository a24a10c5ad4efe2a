"""Ending a child process for sure: the one sequence the daemon launcher, the benches, capture
and the tests all use."""

from __future__ import annotations

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
