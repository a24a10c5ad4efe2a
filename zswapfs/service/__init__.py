"""The service around the engine: daemon lifecycle (mount, serve, unmount), configuration (TOML
and size expressions), hardening (mlockall, OOM score, sd_notify), swap set-up (losetup, mkswap,
swapon), what the kernel says about mounts, loop devices and swap (mounts.py), and the Prometheus
metrics endpoint (metrics.py).

May import zswapfs.fs and zswapfs.engine; never zswapfs.cli or zswapfs.lab.
"""
