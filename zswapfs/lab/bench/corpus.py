"""Bench corpora: captured files, captures of commands or bundled workloads, synthetic pages."""

from __future__ import annotations

import random
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.lab.capture import capture_command
from zswapfs.lab.replay import load_corpus

WORKLOADS = Path(__file__).resolve().parent.parent / "workloads"
BUILTIN = {
    "py_dicts": lambda mib: [sys.executable, "-m", "zswapfs.lab.workloads.py_dicts", str(mib)],
    "sqlite_mem": lambda mib: [sys.executable, "-m", "zswapfs.lab.workloads.sqlite_mem", str(mib)],
    "node_objects": lambda mib: ["node", str(WORKLOADS / "node_objects.js"), str(mib)],
}


class BenchError(Exception):
    pass


@dataclass
class Corpus:
    name: str
    data: bytes
    source: str

    @property
    def pages(self) -> int:
        return len(self.data) // PAGE_SIZE


def synthetic_corpus(npages: int, seed: int = 3) -> bytes:
    """A mix like real memory: zero pages, text-like, half random, fully random."""
    rnd = random.Random(seed)
    words = [
        bytes(rnd.choice(b"abcdefghijklmnop") for _ in range(rnd.randint(2, 9))) for _ in range(300)
    ]
    out = bytearray()
    for i in range(npages):
        kind = i % 10
        if kind == 0:
            page = bytes(PAGE_SIZE)
        elif kind == 9:
            page = rnd.randbytes(PAGE_SIZE)
        elif kind >= 7:
            page = rnd.randbytes(PAGE_SIZE // 2) + bytes(PAGE_SIZE // 2)
        else:
            page = b" ".join(rnd.choice(words) for _ in range(900))[:PAGE_SIZE]
            page = page.ljust(PAGE_SIZE, b"\0")
        out += page
    return bytes(out)


def load_spec(spec: str, workdir: Path) -> Corpus:
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        try:
            npages = int(arg)
        except ValueError:
            raise BenchError(f"synthetic corpus wants a page count, got {arg!r}") from None
        return Corpus(f"synthetic{npages}", synthetic_corpus(npages), spec)
    if kind in ("capture", "builtin"):
        if kind == "builtin":
            name, _, mib = arg.partition(":")
            if name not in BUILTIN:
                raise BenchError(f"unknown builtin workload {name!r} ({', '.join(BUILTIN)})")
            command, label = BUILTIN[name](int(mib or 128)), name
        else:
            command = shlex.split(arg)
            if not command:
                raise BenchError("capture: needs a command")
            label = Path(command[0]).name
        out = workdir / f"{label}.pages"
        capture_command(command, out, delay=None if kind == "builtin" else 5.0)
        return Corpus(label, load_corpus(out), spec)
    path = Path(spec)
    if not path.is_file():
        raise BenchError(f"corpus {spec}: no such file (or use capture:, builtin:, synthetic:)")
    return Corpus(path.stem, load_corpus(path), spec)
