"""zswapfs: a compressed swap image served over FUSE.

Layers, each importing only those below it (cli -> lab -> service -> fs -> engine):
    engine/   the data path: page index, codecs, pools, arena, backing file, maintenance
    fs.py     FUSE translation only: one request -> one engine call, storage errors -> errno
    service/  daemon lifecycle, configuration, hardening, swap set-up
    lab/      bench, capture, replay, kernel zram driver, cgroups, workloads, fio jobs
    cli/      argument parsing, one module per verb group
"""

__version__ = "0.1.0"
