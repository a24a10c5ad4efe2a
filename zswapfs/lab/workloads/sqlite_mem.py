"""Workload: an in-memory SQLite database with an index, filled with order rows.

Rows for about the MiB given as the first argument (default 200), then SIGUSR1 to the parent.
"""

import os
import random
import signal
import sqlite3
import sys
import time

target = int(sys.argv[1]) if len(sys.argv) > 1 else 200
rnd = random.Random(7)
db = sqlite3.connect(":memory:")
db.execute("PRAGMA cache_size = -1000000")
db.execute(
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, city TEXT, item TEXT,"
    " qty INTEGER, price REAL, note TEXT)"
)
db.execute("CREATE INDEX by_customer ON orders (customer, city)")
cities = ["Lisbon", "Porto", "Braga", "Faro", "Coimbra", "Evora", "Aveiro", "Leiria"]
items = [f"part-{n:05d}" for n in range(3000)]
rows = target * 1024 * 1024 // 150
batch = []
for _ in range(rows):
    batch.append(
        (
            f"customer{rnd.randint(1, 50000):06d}",
            rnd.choice(cities),
            rnd.choice(items),
            rnd.randint(1, 50),
            round(rnd.uniform(1, 500), 2),
            rnd.choice(["", "gift", "express", "fragile, keep upright", ""]),
        )
    )
    if len(batch) == 10000:
        db.executemany(
            "INSERT INTO orders (customer, city, item, qty, price, note) VALUES (?,?,?,?,?,?)",
            batch,
        )
        batch.clear()
db.commit()
os.kill(os.getppid(), signal.SIGUSR1)
time.sleep(3600)
