"""Real programs whose memory `zswapfs capture` snapshots into corpora for `zswapfs bench`.

Each builds its data, sends SIGUSR1 to its parent (the capturing process) and waits.
    python -m zswapfs.lab.workloads.py_dicts [MiB]      dicts and strings
    python -m zswapfs.lab.workloads.sqlite_mem [MiB]    an in-memory SQLite database
    node zswapfs/lab/workloads/node_objects.js [MiB]    a V8 heap of objects
"""
