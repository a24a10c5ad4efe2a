"""Measuring tools: the bench (bench/: run, fio, report, plots), process memory capture and
replay, the kernel zram driver (kzram), memory cgroups, the FUSE yardsticks (nullfs: pyfuse3;
ramfs: C, built from csrc/ramfs.c), child-process helpers, the bundled workloads and the fio job
files (package data).

May import zswapfs.service, zswapfs.fs and zswapfs.engine; never zswapfs.cli.
"""
