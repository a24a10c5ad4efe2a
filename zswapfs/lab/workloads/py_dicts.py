"""Workload: a Python program building dicts and strings (records of a made-up inventory).

Builds ~MiB of objects given as the first argument (default 200), then tells its parent it is
ready (SIGUSR1, for `zswapfs capture --on-signal`) and waits to be captured.
"""

import os
import random
import signal
import sys
import time

target = int(sys.argv[1]) if len(sys.argv) > 1 else 200
rnd = random.Random(42)
words = [
    "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 10)))
    for _ in range(5000)
]
records: dict[str, dict[str, object]] = {}
i = 0
while len(records) < target * 1024 * 1024 // 600:
    key = f"item-{i:08d}"
    records[key] = {
        "name": " ".join(rnd.choices(words, k=rnd.randint(2, 6))),
        "price": round(rnd.uniform(0.5, 999.0), 2),
        "stock": rnd.randint(0, 10000),
        "tags": rnd.sample(words, k=rnd.randint(1, 5)),
        "notes": f"batch {i // 1000} shelf {rnd.randint(1, 400)} " + rnd.choice(words) * 3,
    }
    i += 1
os.kill(os.getppid(), signal.SIGUSR1)
time.sleep(3600)
