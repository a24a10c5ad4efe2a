"""Workload: a program that builds its data in memory, then touches it at random, as a service
does: run in a memory cgroup smaller than its data, every access may be a swap-in.

    python -m zswapfs.lab.workloads.random_access dicts|sqlite MIB ACCESSES [SEED]

    dicts    records in a Python dict (names, prices, stock, tags, notes: like py_dicts), then
             ACCESSES lookups of random keys, each reading a record and updating its stock
    sqlite   an in-memory SQLite table of order rows with an index (like sqlite_mem), then
             ACCESSES point queries of random rows, one in ten an update

Prints one JSON line: seconds to build and to access, and a checksum of what the accesses read,
the same for the same arguments whatever the memory lived in (the benchmarks compare it across
swap devices: a page swapped in wrong shows there). Exits 0.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
import zlib

RECORD_BYTES = 600  # about what a dict record costs in CPython
ROW_BYTES = 150  # about what an order row costs in SQLite with its index


def dicts(mib: int, accesses: int, rnd: random.Random) -> int:
    words = [
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 10)))
        for _ in range(5000)
    ]
    records: dict[str, dict[str, object]] = {}
    count = mib * 1024 * 1024 // RECORD_BYTES
    for i in range(count):
        records[f"item-{i:08d}"] = {
            "name": " ".join(rnd.choices(words, k=rnd.randint(2, 6))),
            "price": round(rnd.uniform(0.5, 999.0), 2),
            "stock": rnd.randint(0, 10000),
            "tags": rnd.sample(words, k=rnd.randint(1, 5)),
            "notes": f"batch {i // 1000} shelf {rnd.randint(1, 400)} " + rnd.choice(words) * 3,
        }
    global built
    built = time.monotonic()
    crc = 0
    for _ in range(accesses):
        rec = records[f"item-{rnd.randrange(count):08d}"]
        crc = zlib.crc32(f"{rec['name']}|{rec['price']}|{rec['stock']}".encode(), crc)
        rec["stock"] = int(rec["stock"]) + 1  # type: ignore[call-overload]
    return crc


def sqlite(mib: int, accesses: int, rnd: random.Random) -> int:
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA cache_size = -2000000")
    db.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, city TEXT, item TEXT,"
        " qty INTEGER, price REAL, note TEXT)"
    )
    db.execute("CREATE INDEX by_customer ON orders (customer, city)")
    cities = ["Lisbon", "Porto", "Braga", "Faro", "Coimbra", "Evora", "Aveiro", "Leiria"]
    notes = ["", "gift", "express", "fragile, keep upright", ""]
    rows = mib * 1024 * 1024 // ROW_BYTES
    for first in range(0, rows, 10000):
        db.executemany(
            "INSERT INTO orders (customer, city, item, qty, price, note) VALUES (?,?,?,?,?,?)",
            [
                (
                    f"customer{rnd.randint(1, 50000):06d}",
                    rnd.choice(cities),
                    f"part-{rnd.randrange(3000):05d}",
                    rnd.randint(1, 50),
                    round(rnd.uniform(1, 500), 2),
                    rnd.choice(notes),
                )  # fmt: skip
                for _ in range(min(10000, rows - first))
            ],
        )
    db.commit()
    global built
    built = time.monotonic()
    crc = 0
    for n in range(accesses):
        row_id = rnd.randrange(1, rows + 1)
        if n % 10 == 9:
            db.execute("UPDATE orders SET qty = qty + 1 WHERE id = ?", (row_id,))
        row = db.execute("SELECT customer, item, qty, price FROM orders WHERE id = ?", (row_id,))
        crc = zlib.crc32(repr(row.fetchone()).encode(), crc)
    return crc


built = 0.0


def main() -> int:
    kind, mib, accesses = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    run = {"dicts": dicts, "sqlite": sqlite}[kind]
    t0 = time.monotonic()
    crc = run(mib, accesses, random.Random(seed))
    t1 = time.monotonic()
    print(json.dumps({"kind": kind, "mib": mib, "accesses": accesses,
                      "build_s": round(built - t0, 2), "access_s": round(t1 - built, 2),
                      "checksum": crc}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
