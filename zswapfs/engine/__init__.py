"""The page engine: the data path, with no FUSE, no command line and no service around it.

    store        the page index (image page -> empty | same-filled | handle | written back), the
                 read and write paths and the accounting (zram's counter names)
    codec        lz4 / zstd / raw page codecs and same-filled page detection
    pools/       zsmalloc, zbud and z3fold allocators: handle -> bytes inside arena pages
    arena        memfd-backed pool pages; hole punching returns memory
    backing      the backing file: a raw image, page N at offset N * 4096
    maintenance  the background thread: compaction, migration and writeback in bounded steps
    native       the compiled engine (csrc/, built as the module _native): all three pools,
                 the index, the request loop, writeback, flush and recompression batches in C
                 behind the same interfaces; make_store picks the engine

Imports nothing from zswapfs.fs, zswapfs.service, zswapfs.cli or zswapfs.lab.
"""
