/* Store: the page index and the request loop (store.py in C). The index and meta arrays are
 * numpy arrays this object keeps exported while it lives; beside them the same-filled words,
 * the pages in flight, the counters (store.py's names, zram's and zswap's) and each
 * recompression slot's digested dictionaries. The Python class NativeStore (native.py) derives
 * from it and from PageStore, so the rare paths (memory limit with no backing file, rejects,
 * failures, flush, dedup) are PageStore's own Python code running over these primitives.
 *
 * Locking: the store lock guards the index, meta, fill words, pages in flight, slot
 * dictionaries and counters; the file lock is held around a backing-file write and its commit;
 * order: file lock -> store lock -> pool lock. */
#ifndef ZS_STORE_H
#define ZS_STORE_H

#include "pool.h"
#include "codec.h"
#include "workers.h"

/* A recompression slot's dictionary, digested twice (for compressing, for decompressing). The
 * slot holds one reference; a batch step or a read that uses it outside the store lock takes
 * another under the store lock (slot_dict_pin) and lets it go when done (slot_dict_unpin), so
 * _set_slot or _drop_slot replacing the slot's dictionary meanwhile never frees one in use: the
 * last reference frees it. */
typedef struct {
    ZSTD_CDict *c;
    ZSTD_DDict *d;
    int refs; /* atomic */
} SlotDict;

typedef struct {
    uint32_t pn;
    uint16_t rewritten;
    uint16_t owners; /* threads that have it in flight (see store.py's _rewritten) */
} Inflight;

typedef struct {
    PyObject_HEAD
    LockObject *lock;
    PoolObject *pool;
    Py_buffer index_buf, meta_buf;
    uint32_t *index, *meta;
    uint64_t npages;
    /* same-filled words other than 0: open addressing, key pn + 1 (0 = empty slot) */
    uint64_t *fill_keys, *fill_vals;
    size_t fill_cap, fill_count;
    Inflight *inflight;
    size_t inflight_n, inflight_cap;
    long long mem_limit, low_water;
    int huge_to_backing, persistent, codec, level, ready;
    int has_backing; /* set up with a backing file (fixed; backing_fd goes to -1 at close) */
    int backing_fd; /* the BackingFile's descriptor (read and written in C), -1 without one */
    LockObject *file_lock; /* store.py's _file_lock: around backing-file writes */
    double t0;          /* store.py's _t0: CLOCK_MONOTONIC seconds at the store's start */
    uint32_t fixed_now; /* when not 0, what store_now answers (set_clock: the tests' clock) */
    /* counters: the names of store.py (zram's and zswap's) */
    long long stored_pages, same_pages, huge_pages, compr_data_size, failed_reads, failed_writes,
        invalid_io, bd_count, bd_reads, bd_writes, bd_errors, written_back_pages, pool_limit_hit,
        reject_compress_fail, reject_compress_poor, reject_alloc_fail, reject_reclaim_fail;
    long long requests; /* write and read calls (GIL held): the background loop's sign of load */
    /* recompression (store.py's _recode for pages in the write codec): the digested
     * dictionary of each slot, and the counters store.py keeps for it */
    SlotDict *dicts[SLOTS]; /* pinned (slot_dict_pin) for as long as a step or read uses one */
    Py_buffer slot_pages_buf;
    int64_t *slot_pages;
    long long recompressions, recompress_saved_bytes, recompress_not_worth;
    long long notify_free, discards; /* pages and requests discarded (zram's notify_free) */
} StoreObject;

/* The request cores (store.c): any thread, the GIL not held; 0, or -1 with a Python exception
 * set in this thread's state. The byte range must lie inside the image (range_ok). */
int store_write_req(StoreObject *s, uint64_t offset, const uint8_t *data, size_t len,
                    uint32_t stamp);
int store_read_req(StoreObject *s, uint64_t offset, size_t len, uint8_t *out);
int store_discard_req(StoreObject *s, uint64_t offset, uint64_t len);
/* image mode: every page newer in memory than in the backing file written there, then fsync */
int store_flush_req(StoreObject *s);

/* Is [offset, offset + len) inside the image? Written so that nothing can wrap: an offset near
 * 2**64 is refused before any sum is formed (every entry point that takes a byte range checks
 * it here, the kernel's offsets included). */
static inline int range_ok(const StoreObject *s, unsigned long long offset, unsigned long long len)
{
    unsigned long long size = (unsigned long long)s->npages * PAGE_SIZE;
    return offset <= size && len <= size - offset;
}

/* RuntimeError unless the store is set up (and its pool open); -1 then (GIL held) */
int store_check(StoreObject *s);
/* A request failed with an exception that is not a StoreError (a bug below, or a callback's
 * surprise): count it and raise StorageFailure from it, as PageStore.write/read do; a
 * StoreError is left as it is. Returns NULL (GIL held). */
PyObject *store_wrap_failure(StoreObject *s, int writing, unsigned long long offset,
                             Py_ssize_t size);

extern PyTypeObject StoreType;

#endif
