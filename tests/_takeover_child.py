"""The process test_takeover.py kills: a compiled store that hands its state's descriptors to
the test, then runs a workload until it is killed (by a crash point, or by the test at a random
instant) or its budget runs out.

    python -m tests._takeover_child CONFIG_JSON

CONFIG's "sock" is a Unix socket: the state's descriptors go over it first (store, pool, arena
and the backing file's, when there is one); its "journal" is a pipe, one line an operation,
written before ("B op pn count seed") and after ("A") it, and "END" with the counters last, so
the test knows what was acknowledged and what was in flight when the process died. The pages'
contents follow from (pn, seed) alone (page_for), so the test can say what each page must
read."""

from __future__ import annotations

import json
import os
import random
import socket
import sys

from zswapfs.engine.backing import BackingFile
from zswapfs.engine.codec import PAGE_SIZE, DictZstdCodec, make_codec, train_dictionary
from zswapfs.engine.native import make_store

#: seeds: few enough that pages repeat (dedup finds them), of each kind (see page_for)
SEEDS = 160


def page_for(pn: int, seed: int) -> bytes:
    """The page written at *pn* with *seed*: -1 discarded (zeros); seeds that are 0 mod 8 give a
    same-filled page (non-zero word, or zeros), 1 mod 8 an incompressible one (its own random
    bytes), the rest text-like pages that compress and repeat across pages (dedup)."""
    if seed < 0:
        return bytes(PAGE_SIZE)
    kind = seed % 8
    rnd = random.Random(seed)
    if kind == 0:
        word = rnd.getrandbits(64) if seed % 16 else 0
        return word.to_bytes(8, "little") * (PAGE_SIZE // 8)
    if kind == 1:
        return random.Random(pn * 100003 + seed).randbytes(PAGE_SIZE)
    words = [b"swap", b"page", b"zswapfs", b"memfd", b"pool", b"%08d" % seed, b"\n", b" "]
    out = bytearray()
    while len(out) < PAGE_SIZE:
        out += rnd.choice(words) * rnd.randint(1, 3)
    return bytes(out[:PAGE_SIZE])


def main() -> None:
    cfg = json.loads(sys.argv[1])
    npages = cfg["npages"]
    backing = None
    if cfg.get("backing"):
        backing = BackingFile(cfg["backing"], npages, persistent=cfg["mode"] == "image")
    store = make_store(
        "native",
        npages,
        make_codec(cfg["codec"]),
        cfg["pool"],
        backing=backing,
        mem_limit=cfg.get("mem_limit", 0),
    )
    fds = store.state_fds()  # type: ignore[attr-defined]
    sent = [fds.store, fds.pool, fds.arena] + ([backing.fd] if backing else [])
    socket.send_fds(socket.socket(fileno=cfg["sock"]), [b"state"], sent)
    journal = cfg["journal"]
    rnd = random.Random(cfg["seed"])
    pool = store.pool

    def log(line: str) -> None:
        os.write(journal, line.encode() + b"\n")

    for _ in range(cfg["steps"]):
        op = rnd.random()
        pn = rnd.randrange(npages)
        if op < 0.6:
            count = min(rnd.choice((1, 1, 1, 4, 16)), npages - pn)
            seed = rnd.randrange(SEEDS)
            log(f"B write {pn} {count} {seed}")
            store.write(pn * PAGE_SIZE, b"".join(page_for(p, seed) for p in range(pn, pn + count)))
            log("A")
        elif op < 0.67:
            count = min(rnd.randint(1, 8), npages - pn)
            log(f"B discard {pn} {count} -1")
            store.discard(pn * PAGE_SIZE, count * PAGE_SIZE)
            log("A")
        elif op < 0.8:
            store.read(pn * PAGE_SIZE, PAGE_SIZE)  # ages and marks: a read changes meta
        elif op < 0.86:
            pool.compact()
        elif op < 0.9:
            for _ in range(rnd.randint(1, 8)):
                pool.migrate_top()
            pool.release_segments()
        elif op < 0.93 and backing is not None:
            store.writeback_pages(store.cold_pages(rnd.randint(1, 32)))
            if store.persistent:
                store.flush()
        elif op < 0.95 and cfg["pool"] != "zbud":
            if not store.current_slot or rnd.random() < 0.1:
                sample = [store.peek_page(p) for p in range(0, npages, 3)]
                pages = [p for p in sample if p is not None]
                if len(pages) >= 16:
                    store.add_slot(DictZstdCodec(3, train_dictionary(pages, 4096, 3)), 4096)
            store.recompress_pages(store.idle_pages(rnd.randint(8, 64), 0))
            for index in list(store.rewarm)[:8]:
                store.rewarm_page(index)
        elif op < 0.98:
            store.dedup_scan(rnd.sample(range(npages), min(npages, 64)))
    stats = store.stats()
    counters = {k: v for k, v in stats.items() if isinstance(v, int)}
    counters.update({k: stats["pool_stats"][k] for k in ("objects_moved", "migrated_pages")})
    log("END " + json.dumps(counters))


if __name__ == "__main__":
    main()
