"""Type stub of the compiled engine (_native.c)."""

from typing import Any

from numpy.typing import NDArray

LZ4_VERSION: int
ZSTD_VERSION: int

def _set_errors(pool_full: type[Exception], storage_failure: type[Exception]) -> None: ...

class Lock:
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc: object) -> bool: ...

class ZsPool:
    lock: Lock
    pages_used: int
    objects: int
    bytes_stored: int
    pages_compacted: int
    objects_moved: int
    migrated_pages: int
    huge_class_size: int
    raw_threshold: int
    max_chain: int
    arena_holes: int
    arena_high_water: int
    arena_pages_max: int
    arena_max_pages: int
    arena_segments_released: int
    arena_segments_mapped: int
    def _setup(self, max_pages: int, max_chain: int) -> None: ...
    def store(self, data: bytes) -> int: ...
    def read(self, handle: int) -> bytes: ...
    def free(self, handle: int) -> int: ...
    def size(self, handle: int) -> int: ...
    def compact_step(self, budget: int = 32) -> int: ...
    def migrate_page(self, pn: int) -> bool: ...
    def freeable_pages(self) -> int: ...
    def release_segments(self) -> int: ...
    def _arena_is_free(self, pn: int) -> bool: ...
    def class_table(self) -> list[dict[str, int]]: ...
    def metadata_bytes(self) -> int: ...
    def _handle_table(self) -> bytes: ...
    def close(self) -> None: ...

class Store:
    _lock: Lock
    _inflight_count: int
    stored_pages: int
    same_pages: int
    huge_pages: int
    compr_data_size: int
    failed_reads: int
    failed_writes: int
    invalid_io: int
    bd_count: int
    bd_reads: int
    bd_writes: int
    bd_errors: int
    written_back_pages: int
    pool_limit_hit: int
    reject_compress_fail: int
    reject_compress_poor: int
    reject_alloc_fail: int
    reject_reclaim_fail: int
    def _setup(
        self,
        index: NDArray[Any],
        meta: NDArray[Any],
        pool: ZsPool,
        codec: str,
        level: int,
        mem_limit: int,
        low_water: int,
        huge_to_backing: bool,
        persistent: bool,
        has_backing: bool,
        t0: float,
    ) -> None: ...
    def _cwrite(self, offset: int, data: bytes, stamp: int = 0) -> None: ...
    def _cread(self, offset: int, size: int) -> bytes: ...
    def _swap(self, pn: int, entry: int, size: int) -> None: ...
    def _peek(self, pn: int) -> tuple[int, bytes | None]: ...
    def _rewritten(self, pn: int) -> bool: ...
    def _fill_word(self, pn: int) -> int: ...
