"""The null-FUSE baseline (kept here for old command lines): see zswapfs/nullfs.py.

python bench/nullfs.py MOUNTPOINT [--size 1G]     (serves until SIGTERM / Ctrl-C)
"""

from __future__ import annotations

from zswapfs.lab.nullfs import NullStore, main

__all__ = ["NullStore", "main"]

if __name__ == "__main__":
    main()
