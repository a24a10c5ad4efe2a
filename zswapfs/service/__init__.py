"""The service around the engine: daemon lifecycle (mount, serve, unmount), configuration (TOML
and size parsing), hardening (mlockall, OOM score, sd_notify) and swap set-up (losetup, mkswap,
swapon).

May import zswapfs.fs and zswapfs.engine; never zswapfs.cli or zswapfs.lab.
"""
