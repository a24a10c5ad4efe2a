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

/* The store's persistent region (docs/restart.md): one memfd a supervisor keeps, so that a new
 * process takes the store over after a crash or an upgrade. It holds what cannot be derived:
 *   - each page's entry and meta as ONE 64-bit word (entry in the low half, meta in the high:
 *     store.py's table and meta are the two halves, seen from Python as strided views), so a
 *     page changes where it lives, how it is coded and which codec slot decodes it in one
 *     atomic store;
 *   - the fill word of each same-filled page (a sparse array: only pages that hold a non-zero
 *     word are ever touched);
 *   - each recompression slot's codec (its name, level and dictionary);
 *   - the event counters (failed_reads, bd_writes, recompressions, ...), the current slot and
 *     the clock's origin (t0, CLOCK_MONOTONIC, which a new process shares).
 * Counts that follow from the entries (stored_pages, same_pages, huge_pages, compr_data_size,
 * bd_count, the slots' page counts, dedup's reference counts) are recomputed at a takeover.
 *
 * The store's invariants, which hold at any instant a process can die (with the pool's I1-I4,
 * pool.h):
 *   S1 a page's word is committed whole (store_commit) after everything it names is in place:
 *      the pool object (written, its handle's location word set), the fill word, the slot's
 *      codec record, the backing file's copy (BACKED);
 *   S2 what the old word named is let go only after the commit (an object freed, a fill word
 *      cleared, a slot's record dropped once no page names it): a crash in between leaves
 *      garbage (a handle nobody names) that the takeover lets go, never a page naming
 *      something gone;
 *   S3 a background step (recompression, writeback, dedup, compaction, migration) never
 *      changes what a page reads back, so a step cut short anywhere leaves every page
 *      readable as it was; only a request changes contents, and a request not answered is
 *      still in the kernel's queue, to be sent again to the new process (FUSE_NOTIFY_RESEND),
 *      which redoes it whole (writes, discards and reads are idempotent).
 * crash_point() marks the instants between the steps; the tests kill the process there. */
#define STORE_MAGIC "zswstor\0"
/* a new number for any change of the region a process of another build could misread */
#define STORE_FORMAT 1
#define STORE_HEADER_BYTES 16384
/* a slot's dictionary at most (config.py's dict-size bound) */
#define DICT_MAX (1 << 20)
#define SLOT_NAME 40

/* the counters kept in the region: store.py's names (zram's and zswap's); the first five are
 * derived (recomputed at a takeover), the rest are events. current_slot rides along: it lives
 * where the counters do. */
#define STORE_COUNTERS(X)                                                                      \
    X(stored_pages) X(same_pages) X(huge_pages) X(compr_data_size) X(bd_count)                  \
    X(failed_reads) X(failed_writes) X(invalid_io) X(bd_reads) X(bd_writes) X(bd_errors)        \
    X(written_back_pages) X(pool_limit_hit) X(reject_compress_fail) X(reject_compress_poor)     \
    X(reject_alloc_fail) X(reject_reclaim_fail) X(requests) X(recompressions)                   \
    X(recompress_saved_bytes) X(recompress_not_worth) X(pages_rewarmed) X(dedup_merges)         \
    X(notify_free) X(discards) X(current_slot) X(takeovers)

typedef struct {
#define COUNTER_FIELD(name) long long name;
    STORE_COUNTERS(COUNTER_FIELD)
#undef COUNTER_FIELD
} Counters;

/* a recompression slot's codec: valid while name[0] (set last, cleared first) */
typedef struct {
    char name[SLOT_NAME]; /* the codec's name: "zstd:9+dict", "zstd:3", "lz4", "none" */
    int32_t level;
    uint32_t len; /* the dictionary's bytes, at off_dicts + slot * DICT_MAX */
} SlotRecord;

typedef struct {
    char magic[8];
    uint32_t format, codec;
    int32_t level;
    uint32_t persistent;
    uint64_t npages, bytes, off_entries, off_fill, off_dicts;
    /* what the other descriptors of this store must be (a foreign one is refused): the pool's
     * region's and the backing file's device and inode (0: none) */
    uint64_t pool_dev, pool_ino, backing_dev, backing_ino;
    double t0;
    Counters counters;
    SlotRecord slots[SLOTS];
} StoreHeader;

typedef struct {
    PyObject_HEAD
    LockObject *lock;
    PoolObject *pool;
    /* the persistent region: a buffer of the mmap Python made over the memfd (held while the
     * store lives), its header, the page words and the fill words */
    Py_buffer region_buf;
    StoreHeader *hdr;
    uint64_t *ent;
    uint64_t *fillw;
    uint64_t npages;
    int needs_rebuild; /* taken over: _adopt() must run before anything else */
    Inflight *inflight;
    size_t inflight_n, inflight_cap;
    long long mem_limit, low_water;
    int huge_to_backing, persistent, codec, level, ready;
    int has_backing; /* set up with a backing file (fixed; backing_fd goes to -1 at close) */
    int backing_fd; /* the BackingFile's descriptor (read and written in C), -1 without one */
    LockObject *file_lock; /* store.py's _file_lock: around backing-file writes */
    double t0;          /* store.py's _t0: CLOCK_MONOTONIC seconds at the store's start */
    uint32_t fixed_now; /* when not 0, what store_now answers (set_clock: the tests' clock) */
    /* the counters: in the region once set up; here before (PageStore.__init__ sets them) */
    Counters *c;
    Counters local;
    /* recompression (store.py's _recode for pages in the write codec): the digested
     * dictionary of each slot */
    SlotDict *dicts[SLOTS]; /* pinned (slot_dict_pin) for as long as a step or read uses one */
    Py_buffer slot_pages_buf;
    int64_t *slot_pages;
} StoreObject;

/* page pn's entry and meta: the two halves of its word (little-endian: entry first) */
#define IDX(s, pn) (((uint32_t *)(s)->ent)[2 * (size_t)(pn)])
#define META(s, pn) (((uint32_t *)(s)->ent)[2 * (size_t)(pn) + 1])

/* S1: page pn's entry and meta committed in one store (store lock held) */
static inline void store_commit(StoreObject *s, uint32_t pn, uint32_t entry, uint32_t meta)
{
    __atomic_store_n(&s->ent[pn], (uint64_t)meta << 32 | entry, __ATOMIC_RELEASE);
}

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

/* _store_layout(npages) (module.c's table) */
PyObject *py_store_layout(PyObject *mod, PyObject *arg);

extern PyTypeObject StoreType;

#endif
