/* The compiled page engine: the pools, the page index and the request loop in C.
 *
 * It is a transcription of the readable Python reference (store.py, pools/zsmalloc.py,
 * pools/buddy.py, pools/__init__.py, arena.py), data structure for data structure, so that
 * both engines make the same placement decisions and keep the same counters;
 * tests/test_engine_diff.py drives both with the same random sequences and compares them. Read
 * the Python modules for the design (size classes, zspage geometry, fullness groups, buddy
 * placement, handle encoding, lock order); this file says only where it differs and why.
 *
 * Where it differs from the reference: arena segments are mapped with MAP_POPULATE (see
 * arena_map); a new segment is resident at once, which the mlocked daemon's are anyway.
 *
 * Objects
 *   Lock    a pthread mutex with an owner that Python can hold too: `with store.lock:` waits
 *           with the GIL released.
 *   Pool    arena (memfd segments, lowest-first free map, hole punching), handle table and
 *           one placement strategy: zsmalloc's size classes and zspages, or the zbud/z3fold
 *           page records and unbuddied lists; its own Lock (the pool lock). The strategy is
 *           chosen at set-up; the store calls the pool_*_locked functions, which dispatch.
 *   Store   the request loop over numpy-owned index and meta arrays (this object keeps the
 *           buffers exported while it lives), the same-filled words, the pages in flight and
 *           the counters. The Python class NativeStore (native.py) derives from it and from
 *           PageStore, so the rare paths (memory limit, backing file, rejects, writeback,
 *           flush) are PageStore's own Python code running over these primitives. It also
 *           runs the background recompression's batches (store.py's _recode for pages of the
 *           write codec) with each slot's digested zstd dictionary.
 *
 * GIL and locks. Lock order: file lock -> store lock -> pool lock (store.py). A request
 * (write, read) runs with the GIL released and takes the store lock, then the pool lock, once
 * per page (the file lock first for a page it writes to the backing file); before calling
 * back into Python for a rare page it lets every lock go. The one rule that keeps the GIL and
 * the mutexes from deadlocking: no thread waits for a mutex while it holds the GIL. Every such
 * wait goes through lock_wait/lock_enter, which let the GIL go first (a thread may then hold a
 * mutex while it waits to take the GIL back, as with threading.Lock; that is safe because
 * whoever holds the GIL is never blocked on a mutex). lock_take is called only with the GIL
 * released. A function that expects a lock held asserts it (ASSERT_HELD, in ZS_DEBUG builds);
 * a Python method that expects the store lock held checks it and raises RuntimeError.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

#define PAGE_SIZE 4096
#define SEG_SHIFT 8
#define SEG_PAGES (1u << SEG_SHIFT)
#define SEG_MASK (SEG_PAGES - 1)
#define SEG_BYTES ((size_t)SEG_PAGES * PAGE_SIZE)
#define WARM_MAX 64 /* freed pages kept resident for reuse: see arena.py */

/* zsmalloc constants: see pools/zsmalloc.py */
#define HDR 4
#define DELTA 16
#define MIN_SIZE 32
#define NSIZES ((PAGE_SIZE - MIN_SIZE) / DELTA + 1)
#define NGROUPS 12
#define GROUP_FULL 11
#define NONE (-1)
#define COMPACT_BUDGET 32
#define HUGE_LOC (1ull << 62)
#define HUGE_OWNER (1u << 31)
#define FREE_TAG (1ull << 63)
#define PN_MASK 0xFFFFFFFFull
#define LEN_MASK 0x1FFFull
#define IDX_MASK 0x7FFull
#define MAX_HANDLES (1ull << 31)

/* store constants: see store.py */
#define EMPTY 0u
#define SAME 1u
#define BACKED 2u
#define FIRST_HANDLE 3u
#define DIRTY (1u << 31)
/* store.py's meta layout: recompressed pages (a codec slot) and pages sharing an object (dedup)
 * are left to the Python code, which keeps the slot and reference counts */
#define SHARED (1u << 23)
#define SLOT_SHIFT 24
#define SLOT_MASK (0x3Fu << SLOT_SHIFT)
#define SLOTS 64
#define MARK (1u << 30)
#define AGE_MASK (SHARED - 1)

enum { CODEC_NONE = 0, CODEC_LZ4 = 1, CODEC_ZSTD = 2 };

static PyObject *PoolFullError;     /* pools.PoolFull */
static PyObject *StorageFailureError; /* store.StorageFailure */
static PyObject *StoreErrorBase;      /* store.StoreError */

/* ------------------------------------------------------------------------------------------ */
/* Lock: a pthread mutex with an owner. C takes it with lock_take/lock_give (GIL released) or
 * lock_wait (GIL held: lets the GIL go while it waits); Python holds it with `with lock:`.
 * The owner is what makes the rules checkable: lock_held(l) says whether the calling thread
 * holds it, the Python methods that expect the store lock held raise RuntimeError when it is
 * not, C functions that expect it assert it in debug builds (ZS_DEBUG: make sanitize), a
 * release by a thread that does not hold it is refused, and a blocking acquire by the thread
 * that already holds it raises instead of deadlocking.                                         */

#ifdef ZS_DEBUG
#include <assert.h>
#define ASSERT_HELD(l) assert(lock_held(l))
#else
#define ASSERT_HELD(l) ((void)0)
#endif

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    unsigned long owner; /* pthread_self() of the holder, 0 when free (atomic) */
} LockObject;

static inline unsigned long self_id(void) { return (unsigned long)pthread_self(); }

static inline void lock_owned(LockObject *l)
{
    __atomic_store_n(&l->owner, self_id(), __ATOMIC_RELAXED);
}

static inline int lock_held(LockObject *l)
{
    return __atomic_load_n(&l->owner, __ATOMIC_RELAXED) == self_id();
}

/* GIL released (or a C thread) */
static inline void lock_take(LockObject *l)
{
    pthread_mutex_lock(&l->mutex);
    lock_owned(l);
}

static inline void lock_give(LockObject *l)
{
    ASSERT_HELD(l);
    __atomic_store_n(&l->owner, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&l->mutex);
}

/* GIL held (a Python entry point): wait for *l* with the GIL let go */
static void lock_wait(LockObject *l)
{
    /* GIL held: an uncontended lock costs no GIL hand-off */
    if (pthread_mutex_trylock(&l->mutex) == 0) {
        lock_owned(l);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&l->mutex);
    Py_END_ALLOW_THREADS
    lock_owned(l);
}

/* lock_wait for a Python entry point: -1 with RuntimeError when the calling thread holds *l*
 * already (the wait would never end) */
static int lock_enter(LockObject *l)
{
    if (lock_held(l)) {
        PyErr_SetString(PyExc_RuntimeError, "deadlock: this thread already holds the lock");
        return -1;
    }
    lock_wait(l);
    return 0;
}

/* for the Python methods that expect *l* held by the caller: -1 with RuntimeError if not */
static int require_held(LockObject *l, const char *what)
{
    if (lock_held(l))
        return 0;
    PyErr_Format(PyExc_RuntimeError, "%s: the caller must hold the store lock", what);
    return -1;
}

static PyObject *Lock_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (self)
        pthread_mutex_init(&self->mutex, NULL);
    return (PyObject *)self;
}

static void Lock_dealloc(LockObject *self)
{
    pthread_mutex_destroy(&self->mutex);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* acquire(blocking=True, timeout=-1) -> bool, as threading.Lock's */
static PyObject *Lock_acquire(LockObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|pd", kwlist, &blocking, &timeout))
        return NULL;
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return NULL;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return NULL;
    }
    if (pthread_mutex_trylock(&self->mutex) == 0) {
        lock_owned(self);
        Py_RETURN_TRUE;
    }
    if (!blocking)
        Py_RETURN_FALSE;
    if (lock_held(self)) {
        PyErr_SetString(PyExc_RuntimeError, "deadlock: this thread already holds the lock");
        return NULL;
    }
    if (timeout == -1) {
        lock_wait(self);
        Py_RETURN_TRUE;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double whole = (double)(time_t)timeout, frac = timeout - whole;
    until.tv_sec += (time_t)whole;
    until.tv_nsec += (long)(frac * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pthread_mutex_timedlock(&self->mutex, &until);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        Py_RETURN_FALSE;
    lock_owned(self);
    Py_RETURN_TRUE;
}

static PyObject *Lock_release(LockObject *self, PyObject *unused)
{
    if (!lock_held(self)) {
        PyErr_SetString(PyExc_RuntimeError, "release of a lock this thread does not hold");
        return NULL;
    }
    lock_give(self);
    Py_RETURN_NONE;
}

static PyObject *Lock_exit(LockObject *self, PyObject *args)
{
    if (!Lock_release(self, NULL))
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *Lock_locked(LockObject *self, PyObject *unused)
{
    return PyBool_FromLong(__atomic_load_n(&self->owner, __ATOMIC_RELAXED) != 0);
}

static PyObject *Lock_held(LockObject *self, PyObject *unused)
{
    return PyBool_FromLong(lock_held(self));
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, NULL},
    {"__enter__", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"__exit__", (PyCFunction)Lock_exit, METH_VARARGS, NULL},
    {"locked", (PyCFunction)Lock_locked, METH_NOARGS, "held by some thread"},
    {"held", (PyCFunction)Lock_held, METH_NOARGS, "held by the calling thread"},
    {NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zswapfs.engine._native.Lock",
    .tp_basicsize = sizeof(LockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mutex shared by compiled and Python code, with an owner; waits let the GIL go.",
    .tp_new = Lock_new,
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_methods = Lock_methods,
};

/* ------------------------------------------------------------------------------------------ */
/* Arena: arena.py in C                                                                        */

typedef struct {
    uint32_t max_pages, nseg;
    uint8_t **seg_addr;
    int *seg_fd;
    uint16_t *seg_used;
    uint8_t *free_map; /* 1 where a page below high_water is free */
    uint8_t *warm_map; /* 1 where a free page is still resident (arena.py's WARM_MAX) */
    uint32_t nfree, hint, high_water, pages_max, warm;
    long long segments_released;
    long long punch_errors;
} Arena;

static int arena_init(Arena *a, uint32_t max_pages)
{
    memset(a, 0, sizeof(*a));
    a->max_pages = max_pages;
    a->nseg = (max_pages + SEG_PAGES - 1) >> SEG_SHIFT;
    a->seg_addr = calloc(a->nseg, sizeof(*a->seg_addr));
    a->seg_fd = malloc(a->nseg * sizeof(*a->seg_fd));
    a->seg_used = calloc(a->nseg, sizeof(*a->seg_used));
    a->free_map = calloc(max_pages, 1);
    a->warm_map = calloc(max_pages, 1);
    if (!a->seg_addr || !a->seg_fd || !a->seg_used || !a->free_map || !a->warm_map)
        return -1;
    for (uint32_t i = 0; i < a->nseg; i++)
        a->seg_fd[i] = -1;
    return 0;
}

static void arena_close(Arena *a)
{
    if (a->seg_addr) {
        for (uint32_t s = 0; s < a->nseg; s++) {
            if (a->seg_addr[s]) {
                munmap(a->seg_addr[s], SEG_BYTES);
                close(a->seg_fd[s]);
                a->seg_addr[s] = NULL;
                a->seg_fd[s] = -1;
            }
        }
    }
}

static void arena_free_tables(Arena *a)
{
    arena_close(a);
    free(a->seg_addr);
    free(a->seg_fd);
    free(a->seg_used);
    free(a->free_map);
    free(a->warm_map);
    memset(a, 0, sizeof(*a));
}

static inline uint32_t arena_pages_used(const Arena *a) { return a->high_water - a->nfree; }

static inline uint8_t *page_addr(const Arena *a, uint32_t pn)
{
    return a->seg_addr[pn >> SEG_SHIFT] + (size_t)(pn & SEG_MASK) * PAGE_SIZE;
}

static int64_t arena_lowest_free(const Arena *a, uint32_t below)
{
    uint32_t end = below < a->high_water ? below : a->high_water;
    if (!a->nfree || a->hint >= end)
        return -1;
    const uint8_t *p = memchr(a->free_map + a->hint, 1, end - a->hint);
    return p ? (int64_t)(p - a->free_map) : -1;
}

static int arena_map(Arena *a, uint32_t seg)
{
    int fd = memfd_create("zswapfs-seg", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, SEG_BYTES) != 0) {
        close(fd);
        return -1;
    }
    /* populated at once, as the daemon's mlockall(MCL_FUTURE) does anyway: one batched fault
     * for the segment instead of one a page on the write path (holes punched later stay free) */
    void *addr = mmap(NULL, SEG_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (addr == MAP_FAILED) {
        close(fd);
        return -1;
    }
    a->seg_addr[seg] = addr;
    a->seg_fd[seg] = fd;
    return 0;
}

/* The lowest free page; with has_below, only one numbered below *below* (-1 when none).
 * -2: the arena is full or a segment could not be mapped (ArenaFull). */
static int64_t arena_alloc_page(Arena *a, int has_below, uint32_t below)
{
    int64_t pn = arena_lowest_free(a, has_below ? below : a->high_water);
    int fresh = 0;
    if (pn < 0) {
        if (has_below)
            return -1;
        if (a->high_water >= a->max_pages)
            return -2;
        pn = a->high_water;
        fresh = 1;
    }
    uint32_t seg = (uint32_t)pn >> SEG_SHIFT;
    if (!a->seg_addr[seg] && arena_map(a, seg) != 0)
        return -2; /* nothing was taken yet */
    if (a->warm_map[pn]) {
        a->warm_map[pn] = 0;
        a->warm--;
    }
    if (fresh) {
        a->high_water++;
    } else {
        a->free_map[pn] = 0;
        a->nfree--;
        a->hint = (uint32_t)pn + 1;
    }
    a->seg_used[seg]++;
    uint32_t used = arena_pages_used(a);
    if (used > a->pages_max)
        a->pages_max = used;
    return pn;
}

static void arena_punch(Arena *a, uint32_t pn)
{
    if (fallocate(a->seg_fd[pn >> SEG_SHIFT], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)(pn & SEG_MASK) * PAGE_SIZE, PAGE_SIZE) != 0)
        a->punch_errors++;
}

static void arena_free_page(Arena *a, uint32_t pn)
{
    uint32_t seg = pn >> SEG_SHIFT;
    if (a->warm < WARM_MAX) {
        a->warm_map[pn] = 1;
        a->warm++;
    } else {
        arena_punch(a, pn);
    }
    a->seg_used[seg]--;
    if (pn == a->high_water - 1) {
        a->high_water--;
        while (a->high_water && a->free_map[a->high_water - 1]) {
            a->high_water--;
            a->free_map[a->high_water] = 0;
            a->nfree--;
        }
    } else {
        a->free_map[pn] = 1;
        a->nfree++;
        if (pn < a->hint)
            a->hint = pn;
    }
    if (a->hint > a->high_water)
        a->hint = a->high_water;
}

static long arena_release_empty_segments(Arena *a)
{
    for (uint8_t *w = a->warm_map; a->warm && (w = memchr(w, 1, a->max_pages - (w - a->warm_map)));
         w++) {
        *w = 0;
        a->warm--;
        arena_punch(a, (uint32_t)(w - a->warm_map));
    }
    long released = 0;
    for (uint32_t s = 0; s < a->nseg; s++) {
        if (a->seg_addr[s] && a->seg_used[s] == 0) {
            munmap(a->seg_addr[s], SEG_BYTES);
            close(a->seg_fd[s]);
            a->seg_addr[s] = NULL;
            a->seg_fd[s] = -1;
            released++;
        }
    }
    a->segments_released += released;
    return released;
}

static inline int arena_is_free(const Arena *a, uint32_t pn)
{
    return pn >= a->high_water || a->free_map[pn];
}

/* ------------------------------------------------------------------------------------------ */
/* Pool: the HandleTable of pools/__init__.py and pools/zsmalloc.py in C                      */

typedef struct {
    int index, size, pages, objs, huge;
    long long zspages, inuse;
} SizeClass;

/* the pool strategies (pools/__init__.py's POOL_NAMES) */
enum { POOL_ZSMALLOC = 0, POOL_ZBUD = 1, POOL_Z3FOLD = 2 };
/* zbud and z3fold geometry: see pools/buddy.py */
#define CHUNK 64
#define NCHUNKS (PAGE_SIZE / CHUNK)
#define BIG_GAP 3
enum { BUD_FIRST = 0, BUD_MIDDLE = 1, BUD_LAST = 2 };

typedef struct {
    PyObject_HEAD
    LockObject *lock;
    int ready, closed;
    int max_chain;
    Arena arena;
    /* handle table */
    uint64_t *table;
    size_t tlen, tcap;
    uint64_t free_head;
    long long live;
    /* classes */
    SizeClass *classes;
    int nclasses;
    int lookup[NSIZES];
    int huge_class_size;
    int32_t *heads;
    /* per zspage */
    uint16_t *zs_class, *zs_inuse, *zs_bump;
    int32_t *zs_free, *zs_prev, *zs_next;
    uint32_t *zs_first;
    int8_t *zs_group;
    size_t zs_count, zs_cap;
    uint32_t *zs_unused;
    size_t unused_count, unused_cap;
    /* per pool page */
    uint32_t *page_next, *page_owner;
    size_t page_len;
    int compact_cursor;
    long long bytes_stored, pages_compacted, objects_moved, migrated_pages;
    /* zbud and z3fold (kind): per pool page, pools/buddy.py's arrays */
    int kind;
    uint8_t *bd_chunks[3], *bd_mid;
    uint32_t *bd_handle[3];
    int8_t *bd_free_at;
    int32_t *bd_prev, *bd_next;
    size_t bd_len;
    int32_t bd_heads[NCHUNKS + 1];
    long long bd_listed_pages, bd_listed_chunks;
} PoolObject;

static int grow(void **p, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * item);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* handle table ---------------------------------------------------------------------------- */

/* a new handle for *loc*, or 0 when every handle is in use or memory ran out */
static uint64_t handle_new(PoolObject *p, uint64_t loc)
{
    uint64_t head = p->free_head;
    if (head) {
        p->free_head = p->table[head] & ~FREE_TAG;
        p->table[head] = loc;
        p->live++;
        return head;
    }
    if (p->tlen >= MAX_HANDLES || grow((void **)&p->table, &p->tcap, p->tlen + 1, 8) != 0)
        return 0;
    p->table[p->tlen] = loc;
    p->live++;
    return p->tlen++;
}

static inline int handle_get(const PoolObject *p, uint64_t h, uint64_t *loc)
{
    if (h >= p->tlen || (p->table[h] & FREE_TAG))
        return -1;
    *loc = p->table[h];
    return 0;
}

static inline void handle_release(PoolObject *p, uint64_t h)
{
    p->table[h] = FREE_TAG | p->free_head;
    p->free_head = h;
    p->live--;
}

/* classes --------------------------------------------------------------------------------- */

static int best_pages_per_zspage(int size, int max_chain)
{
    int best = 1, best_used = -1;
    for (int pages = 1; pages <= max_chain; pages++) {
        int span = pages * PAGE_SIZE;
        int used = (span - span % size) * 100 / span;
        if (used > best_used) {
            best = pages;
            best_used = used;
        }
    }
    return best;
}

static int build_classes(PoolObject *p)
{
    p->classes = calloc(NSIZES, sizeof(SizeClass));
    if (!p->classes)
        return -1;
    p->nclasses = 0;
    p->huge_class_size = PAGE_SIZE;
    SizeClass *prev = NULL;
    for (int i = NSIZES - 1; i >= 0; i--) {
        int size = MIN_SIZE + i * DELTA;
        int pages = best_pages_per_zspage(size, p->max_chain);
        int objs = pages * PAGE_SIZE / size;
        if (objs == 1 && pages == 1)
            p->huge_class_size = size;
        if (prev && prev->pages == pages && prev->objs == objs) {
            p->lookup[i] = prev->index;
            continue;
        }
        prev = &p->classes[p->nclasses];
        prev->index = p->nclasses++;
        prev->size = size;
        prev->pages = pages;
        prev->objs = objs;
        prev->huge = objs == 1;
        p->lookup[i] = prev->index;
    }
    p->heads = malloc(sizeof(int32_t) * NGROUPS * p->nclasses);
    if (!p->heads)
        return -1;
    for (int i = 0; i < NGROUPS * p->nclasses; i++)
        p->heads[i] = NONE;
    return 0;
}

static inline SizeClass *class_for(PoolObject *p, size_t size)
{
    size_t slot = size + HDR;
    if (slot >= (size_t)p->huge_class_size)
        return &p->classes[0];
    if (slot < MIN_SIZE)
        slot = MIN_SIZE;
    return &p->classes[p->lookup[(slot - MIN_SIZE + DELTA - 1) / DELTA]];
}

static inline int zs_raw_threshold(const PoolObject *p) { return p->huge_class_size - HDR; }

/* zspage lists ---------------------------------------------------------------------------- */

static void zs_link(PoolObject *p, int32_t z, int c, int g)
{
    int slot = c * NGROUPS + g;
    int32_t head = p->heads[slot];
    p->zs_prev[z] = NONE;
    p->zs_next[z] = head;
    if (head != NONE)
        p->zs_prev[head] = z;
    p->heads[slot] = z;
    p->zs_group[z] = (int8_t)g;
}

static void zs_unlink(PoolObject *p, int32_t z)
{
    int32_t prev = p->zs_prev[z], nxt = p->zs_next[z];
    if (prev != NONE)
        p->zs_next[prev] = nxt;
    else
        p->heads[p->zs_class[z] * NGROUPS + p->zs_group[z]] = nxt;
    if (nxt != NONE)
        p->zs_prev[nxt] = prev;
}

static void zs_regroup(PoolObject *p, int32_t z, SizeClass *cls)
{
    int inuse = p->zs_inuse[z], g;
    if (inuse == cls->objs)
        g = GROUP_FULL;
    else if (inuse == 0)
        g = 0;
    else
        g = 1 + inuse * 10 / cls->objs;
    if (g != p->zs_group[z]) {
        zs_unlink(p, z);
        zs_link(p, z, cls->index, g);
    }
}

static int32_t zs_fullest(PoolObject *p, SizeClass *cls, int32_t exclude)
{
    int base = cls->index * NGROUPS;
    for (int g = GROUP_FULL - 1; g > 0; g--) {
        int32_t z = p->heads[base + g];
        if (z == exclude && z != NONE)
            z = p->zs_next[z];
        if (z != NONE)
            return z;
    }
    return NONE;
}

static int32_t zs_emptiest(PoolObject *p, SizeClass *cls)
{
    int base = cls->index * NGROUPS;
    for (int g = 1; g < GROUP_FULL; g++) {
        int32_t z = p->heads[base + g];
        if (z != NONE)
            return z;
    }
    return NONE;
}

/* zspage life ----------------------------------------------------------------------------- */

/* Grow *arr from *old* to *n* items of *item* bytes, the new ones zeroed. */
static int resize_zeroed(void **arr, size_t old, size_t n, size_t item)
{
    void *q = realloc(*arr, n * item);
    if (!q)
        return -1;
    memset((char *)q + old * item, 0, (n - old) * item);
    *arr = q;
    return 0;
}

/* The new length of a per-pool-page table of *len* items that must cover every page handed
 * out (the Python growth rule, so metadata_bytes agrees), or 0 when it already does. */
static size_t page_table_len(const PoolObject *p, size_t len)
{
    size_t hw = p->arena.high_water;
    if (hw <= len)
        return 0;
    size_t need = hw - len, g = len / 8;
    if (g < need)
        g = need;
    if (g < 64)
        g = 64;
    return len + g;
}

static int track_pages(PoolObject *p)
{
    size_t n = page_table_len(p, p->page_len);
    if (!n)
        return 0;
    if (resize_zeroed((void **)&p->page_next, p->page_len, n, 4) ||
        resize_zeroed((void **)&p->page_owner, p->page_len, n, 4))
        return -1;
    p->page_len = n;
    return 0;
}

static int32_t zs_new(PoolObject *p, SizeClass *cls)
{
    uint32_t pages[16];
    for (int i = 0; i < cls->pages; i++) {
        int64_t pn = arena_alloc_page(&p->arena, 0, 0);
        if (pn < 0) {
            for (int j = 0; j < i; j++)
                arena_free_page(&p->arena, pages[j]);
            return NONE;
        }
        pages[i] = (uint32_t)pn;
    }
    int32_t z;
    if (p->unused_count) {
        z = (int32_t)p->zs_unused[--p->unused_count];
    } else {
        size_t n = p->zs_count + 1, c;
        c = p->zs_cap;
        if (grow((void **)&p->zs_class, &c, n, 2)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_inuse, &c, n, 2)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_bump, &c, n, 2)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_free, &c, n, 4)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_prev, &c, n, 4)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_next, &c, n, 4)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_first, &c, n, 4)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_group, &c, n, 1)) goto nomem;
        p->zs_cap = c;
        z = (int32_t)p->zs_count++;
        p->zs_prev[z] = NONE;
        p->zs_next[z] = NONE;
        p->zs_group[z] = 0;
    }
    p->zs_class[z] = (uint16_t)cls->index;
    p->zs_inuse[z] = 0;
    p->zs_bump[z] = 0;
    p->zs_free[z] = NONE;
    p->zs_first[z] = pages[0];
    if (track_pages(p) != 0)
        goto nomem_z;
    for (int i = 0; i < cls->pages; i++) {
        p->page_owner[pages[i]] = (uint32_t)z;
        p->page_next[pages[i]] = i + 1 < cls->pages ? pages[i + 1] : 0;
    }
    zs_link(p, z, cls->index, 0);
    cls->zspages++;
    return z;
nomem_z:
    if (grow((void **)&p->zs_unused, &p->unused_cap, p->unused_count + 1, 4) == 0)
        p->zs_unused[p->unused_count++] = (uint32_t)z; /* else the id is lost, nothing worse */
nomem:
    for (int j = 0; j < cls->pages; j++)
        arena_free_page(&p->arena, pages[j]);
    return NONE;
}

static int zs_release(PoolObject *p, int32_t z, SizeClass *cls)
{
    if (grow((void **)&p->zs_unused, &p->unused_cap, p->unused_count + 1, 4) != 0)
        return -1;
    zs_unlink(p, z);
    p->zs_group[z] = NONE;
    uint32_t pn = p->zs_first[z];
    for (int i = 0; i < cls->pages; i++) {
        uint32_t nxt = p->page_next[pn];
        arena_free_page(&p->arena, pn);
        pn = nxt;
    }
    p->zs_unused[p->unused_count++] = (uint32_t)z;
    cls->zspages--;
    return 0;
}

static inline uint32_t zs_page_at(const PoolObject *p, int32_t z, uint32_t k)
{
    uint32_t pn = p->zs_first[z];
    while (k--)
        pn = p->page_next[pn];
    return pn;
}

/* bytes in a zspage ----------------------------------------------------------------------- */

static void zs_copy_out(const PoolObject *p, int32_t z, uint32_t start, uint8_t *dst, size_t len)
{
    uint32_t pn = zs_page_at(p, z, start >> 12);
    uint32_t off = start & (PAGE_SIZE - 1), first = PAGE_SIZE - off;
    if (len <= first) {
        memcpy(dst, page_addr(&p->arena, pn) + off, len);
        return;
    }
    memcpy(dst, page_addr(&p->arena, pn) + off, first);
    memcpy(dst + first, page_addr(&p->arena, p->page_next[pn]), len - first);
}

static void zs_copy_in(PoolObject *p, int32_t z, uint32_t start, const uint8_t *src, size_t len)
{
    uint32_t pn = zs_page_at(p, z, start >> 12);
    uint32_t off = start & (PAGE_SIZE - 1), first = PAGE_SIZE - off;
    if (len <= first) {
        memcpy(page_addr(&p->arena, pn) + off, src, len);
        return;
    }
    memcpy(page_addr(&p->arena, pn) + off, src, first);
    memcpy(page_addr(&p->arena, p->page_next[pn]), src + first, len - first);
}

static inline uint32_t zs_header(const PoolObject *p, int32_t z, uint32_t start)
{
    uint8_t b[HDR];
    zs_copy_out(p, z, start, b, HDR);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static inline void put_le32(uint8_t *b, uint32_t v)
{
    b[0] = v & 0xff;
    b[1] = (v >> 8) & 0xff;
    b[2] = (v >> 16) & 0xff;
    b[3] = (v >> 24) & 0xff;
}

static inline void zs_set_header(PoolObject *p, int32_t z, uint32_t start, uint32_t v)
{
    uint8_t b[HDR];
    put_le32(b, v);
    zs_copy_in(p, z, start, b, HDR);
}

/* slot allocation (pool lock held) -------------------------------------------------------- */

static int zs_take_slot(PoolObject *p, SizeClass *cls, int32_t z)
{
    int idx = p->zs_free[z];
    if (idx != NONE) {
        p->zs_free[z] = (int32_t)(zs_header(p, z, (uint32_t)idx * cls->size) >> 1) - 1;
    } else {
        idx = p->zs_bump[z];
        p->zs_bump[z] = (uint16_t)(idx + 1);
    }
    p->zs_inuse[z]++;
    cls->inuse++;
    zs_regroup(p, z, cls);
    return idx;
}

static int zs_drop_slot(PoolObject *p, SizeClass *cls, int32_t z, int idx)
{
    cls->inuse--;
    int inuse = p->zs_inuse[z] - 1;
    p->zs_inuse[z] = (uint16_t)inuse;
    if (inuse == 0)
        return zs_release(p, z, cls);
    zs_set_header(p, z, (uint32_t)idx * cls->size, (uint32_t)(p->zs_free[z] + 1) << 1);
    p->zs_free[z] = idx;
    zs_regroup(p, z, cls);
    return 0;
}

/* zsmalloc's side of the pool interface (pool lock held) ---------------------------------- */

static uint64_t zs_store_locked(PoolObject *p, const uint8_t *data, size_t len)
{
    SizeClass *cls = class_for(p, len);
    if (cls->huge) {
        int64_t pn = arena_alloc_page(&p->arena, 0, 0);
        if (pn < 0)
            return 0;
        uint64_t h = handle_new(p, HUGE_LOC | (uint64_t)pn << 13 | len);
        if (!h || track_pages(p) != 0) {
            if (h)
                handle_release(p, h);
            arena_free_page(&p->arena, (uint32_t)pn);
            return 0;
        }
        p->page_owner[pn] = HUGE_OWNER | (uint32_t)h;
        cls->zspages++;
        cls->inuse++;
        p->bytes_stored += len;
        memcpy(page_addr(&p->arena, (uint32_t)pn), data, len);
        return h;
    }
    uint64_t h = handle_new(p, 0);
    if (!h)
        return 0;
    int32_t z = zs_fullest(p, cls, NONE);
    if (z == NONE) {
        z = zs_new(p, cls);
        if (z == NONE) {
            handle_release(p, h);
            return 0;
        }
    }
    int idx = zs_take_slot(p, cls, z);
    uint32_t start = (uint32_t)idx * cls->size;
    zs_set_header(p, z, start, (uint32_t)(h << 1 | 1));
    zs_copy_in(p, z, start + HDR, data, len);
    p->table[h] = (uint64_t)z << 24 | (uint64_t)idx << 13 | len;
    p->bytes_stored += len;
    return h;
}

static int zs_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    size_t len = loc & LEN_MASK;
    if (loc & HUGE_LOC) {
        memcpy(dst, page_addr(&p->arena, (uint32_t)((loc >> 13) & PN_MASK)), len);
        return (int)len;
    }
    int32_t z = (int32_t)(loc >> 24);
    const SizeClass *cls = &p->classes[p->zs_class[z]];
    zs_copy_out(p, z, (uint32_t)((loc >> 13) & IDX_MASK) * cls->size + HDR, dst, len);
    return (int)len;
}

static int zs_free_locked(PoolObject *p, uint64_t h)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    int len = (int)(loc & LEN_MASK);
    if (loc & HUGE_LOC) {
        arena_free_page(&p->arena, (uint32_t)((loc >> 13) & PN_MASK));
        p->classes[0].zspages--;
        p->classes[0].inuse--;
    } else {
        int32_t z = (int32_t)(loc >> 24);
        if (zs_drop_slot(p, &p->classes[p->zs_class[z]], z, (int)((loc >> 13) & IDX_MASK)))
            return -1;
    }
    handle_release(p, h);
    p->bytes_stored -= len;
    return len;
}

static inline long long freeable_zspages(const SizeClass *cls)
{
    if (cls->huge)
        return 0;
    return (cls->zspages * cls->objs - cls->inuse) / cls->objs;
}

static int compact_class_step(PoolObject *p, SizeClass *cls, int budget)
{
    if (freeable_zspages(cls) == 0)
        return -1;
    int32_t src = zs_emptiest(p, cls);
    if (src == NONE)
        return -1;
    uint8_t data[PAGE_SIZE];
    int bump = p->zs_bump[src];
    for (int idx = 0; idx < bump; idx++) {
        if (budget == 0)
            return 0;
        uint32_t start = (uint32_t)idx * cls->size;
        uint32_t hdr = zs_header(p, src, start);
        if (!(hdr & 1))
            continue;
        int32_t dst = zs_fullest(p, cls, src);
        if (dst == NONE)
            return -1;
        uint64_t h = hdr >> 1;
        size_t len = p->table[h] & LEN_MASK;
        zs_copy_out(p, src, start + HDR, data, len);
        int nidx = zs_take_slot(p, cls, dst);
        uint32_t nstart = (uint32_t)nidx * cls->size;
        zs_set_header(p, dst, nstart, (uint32_t)(h << 1 | 1));
        zs_copy_in(p, dst, nstart + HDR, data, len);
        p->table[h] = (uint64_t)dst << 24 | (uint64_t)nidx << 13 | len;
        p->objects_moved++;
        budget--;
        int released = p->zs_inuse[src] == 1;
        if (zs_drop_slot(p, cls, src, idx))
            return -1;
        if (released) {
            p->pages_compacted += cls->pages;
            return cls->pages;
        }
    }
    return 0;
}

static int zs_compact_step_locked(PoolObject *p, int budget)
{
    int n = p->nclasses;
    for (int i = 0; i < n; i++) {
        SizeClass *cls = &p->classes[(p->compact_cursor + i) % n];
        int step = compact_class_step(p, cls, budget);
        if (step >= 0) {
            p->compact_cursor = cls->index;
            return step;
        }
    }
    return -1;
}

static int bd_track_pages(PoolObject *p);

/* migrate_page's isolate and copy, for every pool: the lowest free page below live page *pn*
 * (the page tables grown to cover it) holding a copy of it, or -1 when there is none (putback:
 * nothing touched) */
static int64_t migrate_copy(PoolObject *p, uint32_t pn)
{
    Arena *a = &p->arena;
    int zs = p->kind == POOL_ZSMALLOC;
    if (arena_is_free(a, pn) || pn >= (zs ? p->page_len : p->bd_len))
        return -1;
    int64_t nw = arena_alloc_page(a, 1, pn);
    if (nw < 0)
        return -1;
    if ((zs ? track_pages(p) : bd_track_pages(p)) != 0) {
        arena_free_page(a, (uint32_t)nw);
        return -1;
    }
    memcpy(page_addr(a, (uint32_t)nw), page_addr(a, pn), PAGE_SIZE);
    return nw;
}

static int zs_migrate_page_locked(PoolObject *p, uint32_t pn)
{
    Arena *a = &p->arena;
    int64_t nw = migrate_copy(p, pn);
    if (nw < 0)
        return 0;
    uint32_t owner = p->page_owner[pn];
    if (owner & HUGE_OWNER) {
        uint64_t h = owner & ~HUGE_OWNER;
        uint64_t len = p->table[h] & LEN_MASK;
        p->table[h] = HUGE_LOC | (uint64_t)nw << 13 | len;
    } else {
        int32_t z = (int32_t)owner;
        if (p->zs_first[z] == pn) {
            p->zs_first[z] = (uint32_t)nw;
        } else {
            uint32_t prev = p->zs_first[z];
            while (p->page_next[prev] != pn)
                prev = p->page_next[prev];
            p->page_next[prev] = (uint32_t)nw;
        }
        p->page_next[nw] = p->page_next[pn];
    }
    p->page_owner[nw] = owner;
    arena_free_page(a, pn);
    p->migrated_pages++;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Buddy pools: pools/buddy.py (zbud, z3fold) in C. The page records live in arrays indexed by
 * pool page number, as there; a location word is pn << 15 | buddy << 13 | length.            */

static inline int chunks_for(size_t size) { return (int)((size + CHUNK - 1) / CHUNK); }

static int bd_track_pages(PoolObject *p)
{
    size_t old = p->bd_len, n = page_table_len(p, old);
    if (!n)
        return 0;
    for (int b = 0; b < 3; b++)
        if (resize_zeroed((void **)&p->bd_chunks[b], old, n, 1) ||
            resize_zeroed((void **)&p->bd_handle[b], old, n, 4))
            return -1;
    if (resize_zeroed((void **)&p->bd_mid, old, n, 1) ||
        resize_zeroed((void **)&p->bd_free_at, old, n, 1) ||
        resize_zeroed((void **)&p->bd_prev, old, n, 4) ||
        resize_zeroed((void **)&p->bd_next, old, n, 4))
        return -1;
    p->bd_len = n;
    return 0;
}

/* first chunk of buddy *bud* of page *pn* */
static inline int bd_first_chunk(const PoolObject *p, uint32_t pn, int bud)
{
    if (bud == BUD_FIRST)
        return 0;
    if (bud == BUD_LAST)
        return NCHUNKS - p->bd_chunks[BUD_LAST][pn];
    return p->bd_mid[pn];
}

static inline uint8_t *bd_addr(const PoolObject *p, uint64_t loc)
{
    uint32_t pn = (uint32_t)(loc >> 15);
    return page_addr(&p->arena, pn) + bd_first_chunk(p, pn, (int)(loc >> 13) & 3) * CHUNK;
}

/* chunks an allocation could use in page *pn* under the placement rules */
static int bd_free_chunks(const PoolObject *p, uint32_t pn)
{
    int f = p->bd_chunks[BUD_FIRST][pn], m = p->bd_chunks[BUD_MIDDLE][pn];
    int l = p->bd_chunks[BUD_LAST][pn];
    if (p->kind == POOL_ZBUD)
        return f && l ? 0 : NCHUNKS - f - l;
    if (f && m && l)
        return 0;
    if (m) {
        int ms = p->bd_mid[pn];
        int before = f ? 0 : ms, after = l ? 0 : NCHUNKS - ms - m;
        return before > after ? before : after;
    }
    return NCHUNKS - f - l;
}

/* which buddy of page *pn* takes an object of *n* chunks (the caller checked it fits) */
static int bd_choose(const PoolObject *p, uint32_t pn, int n)
{
    if (!p->bd_chunks[BUD_FIRST][pn]) {
        if (p->kind == POOL_Z3FOLD && p->bd_chunks[BUD_MIDDLE][pn] && n > p->bd_mid[pn])
            return BUD_LAST;
        return BUD_FIRST;
    }
    if (!p->bd_chunks[BUD_LAST][pn])
        return BUD_LAST;
    return BUD_MIDDLE;
}

static void bd_list_del(PoolObject *p, uint32_t pn)
{
    int k = p->bd_free_at[pn];
    if (k < 0)
        return;
    int32_t prev = p->bd_prev[pn], nxt = p->bd_next[pn];
    if (prev != NONE)
        p->bd_next[prev] = nxt;
    else
        p->bd_heads[k] = nxt;
    if (nxt != NONE)
        p->bd_prev[nxt] = prev;
    p->bd_free_at[pn] = NONE;
    p->bd_listed_pages--;
    p->bd_listed_chunks -= NCHUNKS - k;
}

/* (re)file page *pn* at the head of the unbuddied list of its free chunks, or on none */
static void bd_list_add(PoolObject *p, uint32_t pn)
{
    bd_list_del(p, pn);
    int k = bd_free_chunks(p, pn);
    if (k == 0)
        return;
    int32_t head = p->bd_heads[k];
    p->bd_prev[pn] = NONE;
    p->bd_next[pn] = head;
    if (head != NONE)
        p->bd_prev[head] = (int32_t)pn;
    p->bd_heads[k] = (int32_t)pn;
    p->bd_free_at[pn] = (int8_t)k;
    p->bd_listed_pages++;
    p->bd_listed_chunks += NCHUNKS - k;
}

static inline int bd_taken(const int32_t *taken, int ntaken, int32_t pn)
{
    for (int i = 0; i < ntaken; i++)
        if (taken[i] == pn)
            return 1;
    return 0;
}

/* the first page on the tightest unbuddied list that fits *n* chunks, skipping *taken* */
static int32_t bd_find_page(const PoolObject *p, int n, const int32_t *taken, int ntaken)
{
    for (int k = n; k <= NCHUNKS; k++) {
        int32_t pn = p->bd_heads[k];
        while (pn != NONE && bd_taken(taken, ntaken, pn))
            pn = p->bd_next[pn];
        if (pn != NONE)
            return pn;
    }
    return NONE;
}

static int32_t bd_new_page(PoolObject *p)
{
    int64_t pn = arena_alloc_page(&p->arena, 0, 0);
    if (pn < 0)
        return NONE;
    if (bd_track_pages(p) != 0) {
        arena_free_page(&p->arena, (uint32_t)pn);
        return NONE;
    }
    for (int b = 0; b < 3; b++)
        p->bd_chunks[b][pn] = 0;
    p->bd_mid[pn] = 0;
    p->bd_free_at[pn] = NONE;
    return (int32_t)pn;
}

/* claim a buddy of *pn* for an object of *len* bytes; its location word */
static uint64_t bd_put(PoolObject *p, uint32_t pn, uint64_t h, size_t len)
{
    int n = chunks_for(len), bud = bd_choose(p, pn, n);
    p->bd_chunks[bud][pn] = (uint8_t)n;
    p->bd_handle[bud][pn] = (uint32_t)h;
    if (bud == BUD_MIDDLE)
        p->bd_mid[pn] = p->bd_chunks[BUD_FIRST][pn];
    bd_list_add(p, pn);
    return (uint64_t)pn << 15 | (uint64_t)bud << 13 | len;
}

static uint64_t bd_store_locked(PoolObject *p, const uint8_t *data, size_t len)
{
    uint64_t h = handle_new(p, 0);
    if (!h)
        return 0;
    int32_t pn = bd_find_page(p, chunks_for(len), NULL, 0);
    if (pn == NONE && (pn = bd_new_page(p)) == NONE) {
        handle_release(p, h);
        return 0;
    }
    uint64_t loc = bd_put(p, (uint32_t)pn, h, len);
    p->table[h] = loc;
    memcpy(bd_addr(p, loc), data, len);
    p->bytes_stored += len;
    return h;
}

/* z3fold's in-page compaction: the middle object moves to chunk *start* as buddy *to* */
static void bd_move_middle(PoolObject *p, uint32_t pn, int start, int to)
{
    int n = p->bd_chunks[BUD_MIDDLE][pn];
    uint32_t h = p->bd_handle[BUD_MIDDLE][pn];
    uint64_t len = p->table[h] & LEN_MASK;
    const uint8_t *src = page_addr(&p->arena, pn) + p->bd_mid[pn] * CHUNK;
    p->bd_chunks[BUD_MIDDLE][pn] = 0;
    p->bd_chunks[to][pn] = (uint8_t)n;
    p->bd_handle[to][pn] = h;
    if (to == BUD_MIDDLE)
        p->bd_mid[pn] = (uint8_t)start;
    uint64_t loc = (uint64_t)pn << 15 | (uint64_t)to << 13 | len;
    memmove(bd_addr(p, loc), src, len); /* within one page: the ranges may overlap */
    p->table[h] = loc;
    p->objects_moved++;
}

static void bd_compact_page(PoolObject *p, uint32_t pn)
{
    int f = p->bd_chunks[BUD_FIRST][pn], m = p->bd_chunks[BUD_MIDDLE][pn];
    int l = p->bd_chunks[BUD_LAST][pn];
    if (!m)
        return;
    int ms = p->bd_mid[pn];
    if (!f && !l)
        bd_move_middle(p, pn, 0, BUD_FIRST);
    else if (f && !l && ms - f >= BIG_GAP)
        bd_move_middle(p, pn, f, BUD_MIDDLE);
    else if (l && !f && NCHUNKS - l - (ms + m) >= BIG_GAP)
        bd_move_middle(p, pn, NCHUNKS - l - m, BUD_MIDDLE);
}

static int bd_free_locked(PoolObject *p, uint64_t h)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    handle_release(p, h);
    int len = (int)(loc & LEN_MASK);
    p->bytes_stored -= len;
    uint32_t pn = (uint32_t)(loc >> 15);
    p->bd_chunks[(loc >> 13) & 3][pn] = 0;
    if (!(p->bd_chunks[BUD_FIRST][pn] || p->bd_chunks[BUD_MIDDLE][pn] ||
          p->bd_chunks[BUD_LAST][pn])) {
        bd_list_del(p, pn);
        arena_free_page(&p->arena, pn);
        return len;
    }
    if (p->kind == POOL_Z3FOLD)
        bd_compact_page(p, pn);
    bd_list_add(p, pn);
    return len;
}

static int bd_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    size_t len = loc & LEN_MASK;
    memcpy(dst, bd_addr(p, loc), len);
    return (int)len;
}

/* Move every object of the emptiest page (three at most) into other pages with room, each to
 * a different page, or nothing when one has no home: 1 when a page was freed, else -1. */
static int bd_compact_step_locked(PoolObject *p)
{
    int32_t src = NONE;
    for (int k = NCHUNKS; k > 0 && src == NONE; k--)
        src = p->bd_heads[k];
    if (src == NONE)
        return -1;
    int buds[3], nb = 0;
    for (int b = BUD_FIRST; b <= BUD_LAST; b++)
        if (p->bd_chunks[b][src])
            buds[nb++] = b;
    /* biggest first; equal sizes keep first, middle, last order (Python's stable sort) */
    for (int i = 1; i < nb; i++)
        for (int j = i; j > 0 && p->bd_chunks[buds[j - 1]][src] < p->bd_chunks[buds[j]][src]; j--) {
            int t = buds[j];
            buds[j] = buds[j - 1];
            buds[j - 1] = t;
        }
    int32_t taken[4] = {src}, dst[3];
    for (int i = 0; i < nb; i++) {
        dst[i] = bd_find_page(p, p->bd_chunks[buds[i]][src], taken, i + 1);
        if (dst[i] == NONE)
            return -1;
        taken[i + 1] = dst[i];
    }
    for (int i = 0; i < nb; i++) {
        int b = buds[i];
        uint32_t h = p->bd_handle[b][src];
        size_t len = p->table[h] & LEN_MASK;
        const uint8_t *from = bd_addr(p, (uint64_t)src << 15 | (uint64_t)b << 13);
        uint64_t loc = bd_put(p, (uint32_t)dst[i], h, len);
        memcpy(bd_addr(p, loc), from, len);
        p->table[h] = loc;
        p->bd_chunks[b][src] = 0;
        p->objects_moved++;
    }
    bd_list_del(p, (uint32_t)src);
    arena_free_page(&p->arena, (uint32_t)src);
    p->pages_compacted++;
    return 1;
}

static int bd_migrate_page_locked(PoolObject *p, uint32_t pn)
{
    Arena *a = &p->arena;
    int64_t nw = migrate_copy(p, pn);
    if (nw < 0)
        return 0;
    for (int b = BUD_FIRST; b <= BUD_LAST; b++) {
        p->bd_chunks[b][nw] = p->bd_chunks[b][pn];
        p->bd_handle[b][nw] = p->bd_handle[b][pn];
        if (p->bd_chunks[b][pn]) {
            uint32_t h = p->bd_handle[b][pn];
            p->table[h] = (uint64_t)nw << 15 | (uint64_t)b << 13 | (p->table[h] & LEN_MASK);
        }
    }
    p->bd_mid[nw] = p->bd_mid[pn];
    p->bd_free_at[nw] = NONE;
    bd_list_del(p, pn);
    bd_list_add(p, (uint32_t)nw);
    for (int b = BUD_FIRST; b <= BUD_LAST; b++)
        p->bd_chunks[b][pn] = 0;
    arena_free_page(a, pn);
    p->migrated_pages++;
    return 1;
}

/* pool pages a perfect repacking of the pages with room would free (O(1), from the counters) */
static long long bd_freeable_pages(const PoolObject *p)
{
    long long n = p->bd_listed_pages - (p->bd_listed_chunks + NCHUNKS - 1) / NCHUNKS - 1;
    return n > 0 ? n : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The pool interface (pool lock held): one strategy or the other                              */

/* Place *len* bytes (1..4096); the new handle, or 0 when the pool has no room (PoolFull). */
static inline uint64_t pool_store_locked(PoolObject *p, const uint8_t *data, size_t len)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_store_locked(p, data, len) : bd_store_locked(p, data, len);
}

/* Copy the object out into dst (room for 4096); its length, or -1 if the handle is not live. */
static inline int pool_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_read_locked(p, h, dst) : bd_read_locked(p, h, dst);
}

/* Release the object; its length, or -1 if the handle is not live (or memory ran out). */
static inline int pool_free_locked(PoolObject *p, uint64_t h)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_free_locked(p, h) : bd_free_locked(p, h);
}

/* Payloads this long or longer are kept raw: a zsmalloc huge object, or a whole buddy page. */
static inline int raw_threshold(const PoolObject *p)
{
    return p->kind == POOL_ZSMALLOC ? zs_raw_threshold(p) : PAGE_SIZE;
}

static int compact_step_locked(PoolObject *p, int budget)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_compact_step_locked(p, budget) : bd_compact_step_locked(p);
}

static int migrate_page_locked(PoolObject *p, uint32_t pn)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_migrate_page_locked(p, pn) : bd_migrate_page_locked(p, pn);
}

/* Python face of the pool ----------------------------------------------------------------- */

static int pool_check(PoolObject *p)
{
    if (!p->ready || p->closed) {
        PyErr_SetString(PyExc_RuntimeError, p->closed ? "the pool is closed" : "pool not set up");
        return -1;
    }
    return 0;
}

/* a new Pool or Store (*type*) with its Lock made, stored at *lock_offset* */
static PyObject *new_with_lock(PyTypeObject *type, size_t lock_offset)
{
    PyObject *self = type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    LockObject *lock = (LockObject *)PyObject_CallNoArgs((PyObject *)&LockType);
    if (!lock) {
        Py_DECREF(self);
        return NULL;
    }
    *(LockObject **)((char *)self + lock_offset) = lock;
    return self;
}

static PyObject *Pool_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    return new_with_lock(type, offsetof(PoolObject, lock));
}

static void Pool_dealloc(PoolObject *p)
{
    PyObject_GC_UnTrack(p);
    arena_free_tables(&p->arena);
    free(p->table);
    free(p->classes);
    free(p->heads);
    free(p->zs_class);
    free(p->zs_inuse);
    free(p->zs_bump);
    free(p->zs_free);
    free(p->zs_prev);
    free(p->zs_next);
    free(p->zs_first);
    free(p->zs_group);
    free(p->zs_unused);
    free(p->page_next);
    free(p->page_owner);
    for (int b = 0; b < 3; b++) {
        free(p->bd_chunks[b]);
        free(p->bd_handle[b]);
    }
    free(p->bd_mid);
    free(p->bd_free_at);
    free(p->bd_prev);
    free(p->bd_next);
    Py_CLEAR(p->lock);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static int Pool_traverse(PoolObject *p, visitproc visit, void *arg)
{
    return 0; /* the Lock holds no references */
}

static PyObject *Pool_setup(PoolObject *p, PyObject *args)
{
    static const char *kinds[] = {"zsmalloc", "zbud", "z3fold"};
    unsigned long long max_pages;
    int max_chain;
    const char *name;
    if (!PyArg_ParseTuple(args, "Kis", &max_pages, &max_chain, &name))
        return NULL;
    if (p->ready) {
        PyErr_SetString(PyExc_RuntimeError, "pool already set up");
        return NULL;
    }
    int kind = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(name, kinds[i]) == 0)
            kind = i;
    if (kind < 0) {
        PyErr_Format(PyExc_ValueError, "unknown pool %s", name);
        return NULL;
    }
    if (kind == POOL_ZSMALLOC && (max_chain < 1 || max_chain > 16)) {
        PyErr_Format(PyExc_ValueError, "zsmalloc chain length %d out of range 1..16", max_chain);
        return NULL;
    }
    if (max_pages == 0 || max_pages > 0xFFFFFFFFull) {
        PyErr_SetString(PyExc_ValueError, "an arena needs 1..2**32-1 pages");
        return NULL;
    }
    p->kind = kind;
    p->max_chain = max_chain;
    for (int k = 0; k <= NCHUNKS; k++)
        p->bd_heads[k] = NONE;
    if (arena_init(&p->arena, (uint32_t)max_pages) != 0 ||
        (kind == POOL_ZSMALLOC && build_classes(p) != 0) ||
        grow((void **)&p->table, &p->tcap, 3, 8) != 0)
        return PyErr_NoMemory();
    for (int i = 0; i < 3; i++)
        p->table[i] = FREE_TAG;
    p->tlen = 3;
    p->ready = 1;
    Py_RETURN_NONE;
}

static PyObject *Pool_store(PoolObject *p, PyObject *arg)
{
    Py_buffer buf;
    if (pool_check(p) || PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) != 0)
        return NULL;
    if (buf.len < 1 || buf.len > PAGE_SIZE) {
        PyErr_Format(PyExc_ValueError, "object size %zd out of range 1..%d", buf.len, PAGE_SIZE);
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (lock_enter(p->lock)) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    uint64_t h = pool_store_locked(p, buf.buf, (size_t)buf.len);
    lock_give(p->lock);
    PyBuffer_Release(&buf);
    if (!h) {
        PyErr_Format(PoolFullError, "arena of %u pages is full", p->arena.max_pages);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *not_live(unsigned long long h)
{
    PyObject *msg = PyUnicode_FromFormat("handle %llu is not live", h);
    if (msg) {
        PyErr_SetObject(PyExc_KeyError, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

static PyObject *Pool_read(PoolObject *p, PyObject *arg)
{
    unsigned long long h = PyLong_AsUnsignedLongLong(arg);
    if ((h == (unsigned long long)-1 && PyErr_Occurred()) || pool_check(p))
        return NULL;
    uint8_t buf[PAGE_SIZE];
    if (lock_enter(p->lock))
        return NULL;
    int len = pool_read_locked(p, h, buf);
    lock_give(p->lock);
    if (len < 0)
        return not_live(h);
    return PyBytes_FromStringAndSize((char *)buf, len);
}

static PyObject *Pool_free(PoolObject *p, PyObject *arg)
{
    unsigned long long h = PyLong_AsUnsignedLongLong(arg);
    if ((h == (unsigned long long)-1 && PyErr_Occurred()) || pool_check(p))
        return NULL;
    if (lock_enter(p->lock))
        return NULL;
    int len = pool_free_locked(p, h);
    lock_give(p->lock);
    if (len < 0)
        return not_live(h);
    return PyLong_FromLong(len);
}

static PyObject *Pool_size(PoolObject *p, PyObject *arg)
{
    unsigned long long h = PyLong_AsUnsignedLongLong(arg);
    if ((h == (unsigned long long)-1 && PyErr_Occurred()) || pool_check(p))
        return NULL;
    uint64_t loc;
    if (lock_enter(p->lock))
        return NULL;
    int rc = handle_get(p, h, &loc);
    lock_give(p->lock);
    if (rc)
        return not_live(h);
    return PyLong_FromUnsignedLongLong(loc & LEN_MASK);
}

static PyObject *Pool_compact_step(PoolObject *p, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"budget", NULL};
    int budget = COMPACT_BUDGET, step;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i", kwlist, &budget) || pool_check(p))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    lock_take(p->lock);
    step = compact_step_locked(p, budget);
    lock_give(p->lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(step);
}

static PyObject *Pool_migrate_page(PoolObject *p, PyObject *arg)
{
    unsigned long pn = PyLong_AsUnsignedLong(arg);
    int moved;
    if ((pn == (unsigned long)-1 && PyErr_Occurred()) || pool_check(p))
        return NULL;
    if (pn > 0xFFFFFFFFul)
        Py_RETURN_FALSE;
    Py_BEGIN_ALLOW_THREADS
    lock_take(p->lock);
    moved = migrate_page_locked(p, (uint32_t)pn);
    lock_give(p->lock);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(moved);
}

static PyObject *Pool_freeable_pages(PoolObject *p, PyObject *unused)
{
    if (pool_check(p))
        return NULL;
    long long total = 0;
    if (lock_enter(p->lock))
        return NULL;
    if (p->kind != POOL_ZSMALLOC)
        total = bd_freeable_pages(p);
    for (int i = 0; i < p->nclasses; i++)
        total += freeable_zspages(&p->classes[i]) * p->classes[i].pages;
    lock_give(p->lock);
    return PyLong_FromLongLong(total);
}

static PyObject *Pool_release_segments(PoolObject *p, PyObject *unused)
{
    if (pool_check(p))
        return NULL;
    if (lock_enter(p->lock))
        return NULL;
    long n = arena_release_empty_segments(&p->arena);
    lock_give(p->lock);
    return PyLong_FromLong(n);
}

static PyObject *Pool_is_free(PoolObject *p, PyObject *arg)
{
    unsigned long pn = PyLong_AsUnsignedLong(arg);
    if (pn == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(pn >= p->arena.high_water || p->arena.free_map[pn]);
}

static int sort_by_size(const void *a, const void *b)
{
    return (*(const SizeClass *const *)a)->size - (*(const SizeClass *const *)b)->size;
}

static int set_item(PyObject *d, const char *key, long long v)
{
    PyObject *o = PyLong_FromLongLong(v);
    int rc = o ? PyDict_SetItemString(d, key, o) : -1;
    Py_XDECREF(o);
    return rc;
}

static PyObject *Pool_class_table(PoolObject *p, PyObject *unused)
{
    if (pool_check(p))
        return NULL;
    SizeClass **sorted = malloc(sizeof(*sorted) * p->nclasses);
    SizeClass *snap = malloc(sizeof(*snap) * p->nclasses);
    if (!sorted || !snap) {
        free(sorted);
        free(snap);
        return PyErr_NoMemory();
    }
    if (lock_enter(p->lock)) {
        free(sorted);
        free(snap);
        return NULL;
    }
    memcpy(snap, p->classes, sizeof(*snap) * p->nclasses);
    lock_give(p->lock);
    for (int i = 0; i < p->nclasses; i++)
        sorted[i] = &snap[i];
    qsort(sorted, p->nclasses, sizeof(*sorted), sort_by_size);
    PyObject *rows = PyList_New(0);
    for (int i = 0; rows && i < p->nclasses; i++) {
        SizeClass *c = sorted[i];
        if (!c->zspages)
            continue;
        PyObject *d = PyDict_New();
        if (!d || set_item(d, "class_size", c->size) || set_item(d, "objs_per_zspage", c->objs) ||
            set_item(d, "pages_per_zspage", c->pages) ||
            set_item(d, "obj_allocated", c->zspages * c->objs) ||
            set_item(d, "obj_used", c->inuse) || set_item(d, "pages_used", c->zspages * c->pages) ||
            set_item(d, "pages_freeable", freeable_zspages(c) * c->pages) ||
            PyList_Append(rows, d)) {
            Py_XDECREF(d);
            Py_CLEAR(rows);
            break;
        }
        Py_DECREF(d);
    }
    free(sorted);
    free(snap);
    return rows;
}

/* the tables pools/zsmalloc.py or pools/buddy.py would keep, at their item sizes */
static PyObject *Pool_metadata_bytes(PoolObject *p, PyObject *unused)
{
    if (lock_enter(p->lock))
        return NULL;
    size_t n = p->tlen * 8;
    if (p->kind == POOL_ZSMALLOC) {
        n += (size_t)NGROUPS * p->nclasses * 4;
        n += p->zs_count * (2 + 2 + 2 + 4 + 4 + 4 + 4 + 1) + p->unused_count * 4;
        n += p->page_len * 8;
    } else {
        /* chunks and handle of three buddies, middle start, list, prev, next; the list heads */
        n += p->bd_len * (3 * 1 + 3 * 4 + 1 + 1 + 4 + 4) + (NCHUNKS + 1) * 4;
    }
    lock_give(p->lock);
    return PyLong_FromSize_t(n);
}

/* _handle_table() -> bytes: every handle's location word, as HandleTable.table holds them */
static PyObject *Pool_handle_table(PoolObject *p, PyObject *unused)
{
    if (pool_check(p))
        return NULL;
    if (lock_enter(p->lock))
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize((const char *)p->table, (Py_ssize_t)(p->tlen * 8));
    lock_give(p->lock);
    return out;
}

static PyObject *Pool_close(PoolObject *p, PyObject *unused)
{
    if (lock_enter(p->lock))
        return NULL;
    arena_close(&p->arena);
    p->closed = 1;
    lock_give(p->lock);
    Py_RETURN_NONE;
}

/* figures read under the pool lock: the request loop changes them with the GIL released */
#define POOL_GETTER(name, expr)                                                                \
    static PyObject *Pool_get_##name(PoolObject *p, void *c)                                   \
    {                                                                                          \
        if (lock_enter(p->lock))                                                               \
            return NULL;                                                                       \
        long long v = (expr);                                                                  \
        lock_give(p->lock);                                                                    \
        return PyLong_FromLongLong(v);                                                         \
    }
POOL_GETTER(pages_used, arena_pages_used(&p->arena))
POOL_GETTER(objects, p->live)
POOL_GETTER(bytes_stored, p->bytes_stored)
POOL_GETTER(pages_compacted, p->pages_compacted)
POOL_GETTER(objects_moved, p->objects_moved)
POOL_GETTER(migrated_pages, p->migrated_pages)
POOL_GETTER(huge_class_size, p->huge_class_size)
POOL_GETTER(raw_threshold, raw_threshold(p))
POOL_GETTER(max_chain, p->max_chain)
POOL_GETTER(arena_holes, p->arena.nfree)
POOL_GETTER(arena_high_water, p->arena.high_water)
POOL_GETTER(arena_pages_max, p->arena.pages_max)
POOL_GETTER(arena_max_pages, p->arena.max_pages)
POOL_GETTER(arena_segments_released, p->arena.segments_released)
POOL_GETTER(arena_warm_pages, p->arena.warm)
POOL_GETTER(unbuddied_pages, p->bd_listed_pages)

static PyObject *Pool_get_arena_segments_mapped(PoolObject *p, void *c)
{
    long n = 0;
    if (lock_enter(p->lock))
        return NULL;
    for (uint32_t s = 0; s < p->arena.nseg; s++)
        n += p->arena.seg_addr[s] != NULL;
    lock_give(p->lock);
    return PyLong_FromLong(n);
}

static PyObject *Pool_get_lock(PoolObject *p, void *c)
{
    Py_INCREF(p->lock);
    return (PyObject *)p->lock;
}

#define GET(name) {#name, (getter)Pool_get_##name, NULL, NULL, NULL}
static PyGetSetDef Pool_getset[] = {
    GET(pages_used), GET(objects), GET(bytes_stored), GET(pages_compacted), GET(objects_moved),
    GET(migrated_pages), GET(huge_class_size), GET(raw_threshold), GET(max_chain),
    GET(arena_holes), GET(arena_high_water), GET(arena_pages_max), GET(arena_max_pages),
    GET(arena_segments_released), GET(arena_segments_mapped), GET(arena_warm_pages),
    GET(unbuddied_pages), GET(lock),
    {NULL},
};
#undef GET

static PyMethodDef Pool_methods[] = {
    {"_setup", (PyCFunction)Pool_setup, METH_VARARGS, "_setup(max_pages, max_chain, kind)"},
    {"store", (PyCFunction)Pool_store, METH_O, NULL},
    {"read", (PyCFunction)Pool_read, METH_O, NULL},
    {"free", (PyCFunction)Pool_free, METH_O, NULL},
    {"size", (PyCFunction)Pool_size, METH_O, NULL},
    {"compact_step", (PyCFunction)(void (*)(void))Pool_compact_step, METH_VARARGS | METH_KEYWORDS,
     NULL},
    {"migrate_page", (PyCFunction)Pool_migrate_page, METH_O, NULL},
    {"freeable_pages", (PyCFunction)Pool_freeable_pages, METH_NOARGS, NULL},
    {"release_segments", (PyCFunction)Pool_release_segments, METH_NOARGS, NULL},
    {"_arena_is_free", (PyCFunction)Pool_is_free, METH_O, NULL},
    {"class_table", (PyCFunction)Pool_class_table, METH_NOARGS, NULL},
    {"metadata_bytes", (PyCFunction)Pool_metadata_bytes, METH_NOARGS, NULL},
    {"_handle_table", (PyCFunction)Pool_handle_table, METH_NOARGS, NULL},
    {"close", (PyCFunction)Pool_close, METH_NOARGS, NULL},
    {NULL},
};

static PyTypeObject PoolType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zswapfs.engine._native.Pool",
    .tp_basicsize = sizeof(PoolObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A zsmalloc, zbud or z3fold pool in C (see pools/zsmalloc.py, pools/buddy.py).",
    .tp_new = Pool_new,
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_traverse = (traverseproc)Pool_traverse,
    .tp_methods = Pool_methods,
    .tp_getset = Pool_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* Codecs: one compressor and decompressor context per thread (zstd contexts are not
 * thread-safe), made on first use and freed when the thread ends.                             */

typedef struct {
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    int level;
} ZstdLocal;

static pthread_key_t zstd_key;

static void zstd_local_free(void *v)
{
    ZstdLocal *l = v;
    ZSTD_freeCCtx(l->cctx);
    ZSTD_freeDCtx(l->dctx);
    free(l);
}

#define ANY_LEVEL INT32_MIN /* zstd_local for decompression: the compressor is left as it is */

static ZstdLocal *zstd_local(int level)
{
    ZstdLocal *l = pthread_getspecific(zstd_key);
    if (!l) {
        l = calloc(1, sizeof(*l));
        if (!l)
            return NULL;
        l->cctx = ZSTD_createCCtx();
        l->dctx = ZSTD_createDCtx();
        l->level = INT32_MIN;
        if (!l->cctx || !l->dctx || pthread_setspecific(zstd_key, l) != 0) {
            zstd_local_free(l);
            return NULL;
        }
    }
    if (level != ANY_LEVEL && l->level != level) {
        /* as python-zstandard is used in codec.py: no checksum, no content size */
        ZSTD_CCtx_reset(l->cctx, ZSTD_reset_session_and_parameters);
        ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_compressionLevel, level);
        ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_checksumFlag, 0);
        ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_contentSizeFlag, 0);
        l->level = level;
    }
    return l;
}

#define COMPRESS_BOUND 4352 /* >= LZ4_compressBound(4096) and ZSTD_compressBound(4096) */

/* compressed length, or -1 when the codec failed */
static int compress_page(int codec, int level, const uint8_t *src, uint8_t *dst)
{
    if (codec == CODEC_LZ4) {
        int n = LZ4_compress_default((const char *)src, (char *)dst, PAGE_SIZE, COMPRESS_BOUND);
        return n > 0 ? n : -1;
    }
    if (codec == CODEC_ZSTD) {
        ZstdLocal *l = zstd_local(level);
        if (!l)
            return -1;
        size_t n = ZSTD_compress2(l->cctx, dst, COMPRESS_BOUND, src, PAGE_SIZE);
        return ZSTD_isError(n) ? -1 : (int)n;
    }
    memcpy(dst, src, PAGE_SIZE);
    return PAGE_SIZE;
}

/* 0 when *src* decoded to exactly one page */
static int decompress_page(int codec, const uint8_t *src, int len, uint8_t *dst)
{
    if (codec == CODEC_LZ4)
        return LZ4_decompress_safe((const char *)src, (char *)dst, len, PAGE_SIZE) == PAGE_SIZE
                   ? 0
                   : -1;
    if (codec == CODEC_ZSTD) {
        ZstdLocal *l = zstd_local(ANY_LEVEL);
        if (!l)
            return -1;
        size_t n = ZSTD_decompressDCtx(l->dctx, dst, PAGE_SIZE, src, (size_t)len);
        return !ZSTD_isError(n) && n == PAGE_SIZE ? 0 : -1;
    }
    return -1; /* the none codec stores every page raw: a shorter object is corrupt */
}

/* 0 when *src*, compressed with a slot's dictionary, decoded to exactly one page */
static int dict_decompress_page(const ZSTD_DDict *ddict, const uint8_t *src, int len,
                                uint8_t *dst)
{
    ZstdLocal *l = zstd_local(ANY_LEVEL);
    if (!l)
        return -1;
    size_t n = ZSTD_decompress_usingDDict(l->dctx, dst, PAGE_SIZE, src, (size_t)len, ddict);
    return !ZSTD_isError(n) && n == PAGE_SIZE ? 0 : -1;
}

/* a page compressed with a slot's digested dictionary, with the frame settings codec.py's
 * DictZstdCodec uses (no checksum, no content size, no dictionary id); -1 when it failed */
static int dict_compress_page(const ZSTD_CDict *cdict, const uint8_t *src, uint8_t *dst)
{
    ZstdLocal *l = zstd_local(0);
    if (!l)
        return -1;
    l->level = INT32_MIN; /* the context's next plain zstd use sets its parameters again */
    ZSTD_CCtx_reset(l->cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_checksumFlag, 0);
    ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_contentSizeFlag, 0);
    ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_dictIDFlag, 0);
    if (ZSTD_isError(ZSTD_CCtx_refCDict(l->cctx, cdict)))
        return -1;
    size_t n = ZSTD_compress2(l->cctx, dst, COMPRESS_BOUND, src, PAGE_SIZE);
    ZSTD_CCtx_refCDict(l->cctx, NULL);
    return ZSTD_isError(n) ? -1 : (int)n;
}

/* ------------------------------------------------------------------------------------------ */
/* Page workers: a write request of many whole pages (a 128 KiB or 1 MiB write) has its pages
 * classified and compressed on more than one core before the request loop places them in
 * order. The workers are plain pthreads shared by every store, started on the first such
 * request; the requesting thread works through the same pages alongside them (both take
 * pages from one atomic counter), so a request never waits for a worker to wake up, and a
 * busy or missing worker (another request holds them; a forked child, which has none) only
 * means the requesting thread does every page itself. Only the codec and the same-filled
 * check run here: placement, the index and every counter stay with the request loop, in page
 * order, so a batched request ends exactly as the page-by-page loop would.                    */

enum { PREP_SAME = -2, PREP_FAILED = -1 };
#define PREP_CHUNK 2 /* pages a worker takes at a time */
#define BATCH_MAX 256 /* most pages in one batch: a 1 MiB request */

typedef struct {
    const uint8_t *src;   /* the request's whole pages, back to back */
    uint32_t npages;
    int codec, level;
    int32_t *lens;        /* per page: compressed length, PREP_SAME or PREP_FAILED */
    uint64_t *words;      /* per page: its first word (the fill word of a same-filled page) */
    uint8_t *out;         /* per page: COMPRESS_BOUND bytes of codec output */
    uint32_t next;        /* the next page to take (atomic) */
    int active;           /* workers inside this batch (workers_mu) */
} Batch;

static pthread_mutex_t workers_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t workers_cv = PTHREAD_COND_INITIALIZER; /* a batch was posted */
static pthread_cond_t batch_done_cv = PTHREAD_COND_INITIALIZER; /* a worker left its batch */
static Batch *posted;              /* the batch workers may join (workers_mu) */
static unsigned long long posted_gen; /* counts posted batches (workers_mu) */
/* workers_wanted: -1 until _set_workers says otherwise: then one for every core this process
 * may run on beyond the request thread's, at most 3 (native.py's default_workers) */
static int workers_wanted = -1, workers_running, batch_min_pages = 8;
static int batch_lead = 1; /* the requesting thread compresses too (0: only the workers do) */
static long long batches_parallel, batch_pages_helped; /* workers_mu */

static int compress_page(int codec, int level, const uint8_t *src, uint8_t *dst);

/* same-filled: one 8-byte word repeated, i.e. the page equals itself shifted by a word (one
 * memcmp; the page may sit at any alignment); *word* gets its first word either way */
static inline int same_filled(const uint8_t *page, uint64_t *word)
{
    memcpy(word, page, 8);
    return memcmp(page, page + 8, PAGE_SIZE - 8) == 0;
}

static inline int prepare_page(int codec, int level, const uint8_t *page, uint8_t *out,
                               uint64_t *word)
{
    return same_filled(page, word) ? PREP_SAME : compress_page(codec, level, page, out);
}

/* take pages of *b* until none is left; the number taken */
static uint32_t batch_work(Batch *b)
{
    uint32_t done = 0;
    for (;;) {
        uint32_t i = __atomic_fetch_add(&b->next, PREP_CHUNK, __ATOMIC_RELAXED);
        if (i >= b->npages)
            return done;
        uint32_t end = i + PREP_CHUNK < b->npages ? i + PREP_CHUNK : b->npages;
        for (; i < end; i++, done++)
            b->lens[i] = prepare_page(b->codec, b->level, b->src + (size_t)i * PAGE_SIZE,
                                      b->out + (size_t)i * COMPRESS_BOUND, &b->words[i]);
    }
}

static void *worker_main(void *unused)
{
    unsigned long long seen = 0;
    pthread_mutex_lock(&workers_mu);
    for (;;) {
        while (!posted || posted_gen == seen)
            pthread_cond_wait(&workers_cv, &workers_mu);
        seen = posted_gen;
        Batch *b = posted;
        b->active++;
        pthread_mutex_unlock(&workers_mu);
        uint32_t done = batch_work(b);
        pthread_mutex_lock(&workers_mu);
        batch_pages_helped += done;
        if (--b->active == 0)
            pthread_cond_broadcast(&batch_done_cv);
    }
    return NULL;
}

/* workers_wanted resolved (workers_mu held) */
static int workers_resolved(void)
{
    if (workers_wanted < 0) {
        cpu_set_t cpus;
        int n = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        workers_wanted = n - 1 < 0 ? 0 : n - 1 > 3 ? 3 : n - 1;
    }
    return workers_wanted;
}

/* start the workers asked for and not running yet (workers_mu held) */
static void workers_start(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay with Python's threads */
    while (workers_running < workers_wanted) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        int rc = pthread_create(&t, &attr, worker_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            workers_wanted = workers_running; /* no more threads: work with those there are */
            break;
        }
        workers_running++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* per-thread room for one batch's results (BATCH_MAX pages) */
typedef struct {
    int32_t lens[BATCH_MAX];
    uint64_t words[BATCH_MAX];
    uint8_t out[BATCH_MAX * COMPRESS_BOUND];
    int busy; /* a request on this thread is using it (a callback's nested request must not) */
} Scratch;

static pthread_key_t scratch_key;

static void scratch_free(void *v) { free(v); }

/* this thread's scratch, made on first use; NULL when a request on this thread holds it */
static Scratch *scratch_get(void)
{
    Scratch *sc = pthread_getspecific(scratch_key);
    if (!sc) {
        sc = calloc(1, sizeof(*sc));
        if (!sc || pthread_setspecific(scratch_key, sc) != 0) {
            free(sc);
            return NULL;
        }
    }
    return sc->busy ? NULL : sc;
}

/* Classify and compress *npages* whole pages at *src* into *sc*, with the workers' help when
 * they are free (GIL released). */
static void batch_prepare(Scratch *sc, const uint8_t *src, uint32_t npages, int codec, int level)
{
    Batch b = {.src = src, .npages = npages, .codec = codec, .level = level, .lens = sc->lens,
               .words = sc->words, .out = sc->out};
    int shared = 0, lead = 1;
    pthread_mutex_lock(&workers_mu);
    if (workers_running < workers_resolved())
        workers_start();
    if (!posted && workers_running) {
        posted = &b;
        posted_gen++;
        shared = 1;
        lead = batch_lead; /* read once: _set_workers may change it meanwhile */
        pthread_cond_broadcast(&workers_cv);
    }
    pthread_mutex_unlock(&workers_mu);
    if (lead)
        batch_work(&b);
    if (!shared)
        return;
    pthread_mutex_lock(&workers_mu);
    while (!lead && __atomic_load_n(&b.next, __ATOMIC_RELAXED) < npages)
        pthread_cond_wait(&batch_done_cv, &workers_mu); /* the tests' mode: workers do it all */
    posted = NULL; /* no worker joins from now on; wait for those inside to leave */
    while (b.active)
        pthread_cond_wait(&batch_done_cv, &workers_mu);
    batches_parallel++;
    pthread_mutex_unlock(&workers_mu);
}

/* ------------------------------------------------------------------------------------------ */
/* Store                                                                                       */

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

static SlotDict *slot_dict_new(ZSTD_CDict *c, ZSTD_DDict *d)
{
    SlotDict *sd = malloc(sizeof(*sd));
    if (sd) {
        sd->c = c;
        sd->d = d;
        sd->refs = 1;
    }
    return sd;
}

static void slot_dict_unpin(SlotDict *sd)
{
    if (sd && __atomic_sub_fetch(&sd->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        ZSTD_freeCDict(sd->c);
        ZSTD_freeDDict(sd->d);
        free(sd);
    }
}

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
} StoreObject;

/* slot *slot*'s dictionary with a reference for the caller, or NULL (store lock held) */
static SlotDict *slot_dict_pin(StoreObject *s, int slot)
{
    ASSERT_HELD(s->lock);
    SlotDict *sd = s->dicts[slot];
    if (sd)
        __atomic_add_fetch(&sd->refs, 1, __ATOMIC_RELAXED);
    return sd;
}

/* replace slot *slot*'s dictionary by *sd* (NULL: none) under the store lock; the old one goes
 * with its last reference */
static void slot_dict_set(StoreObject *s, int slot, SlotDict *sd)
{
    ASSERT_HELD(s->lock);
    SlotDict *old = s->dicts[slot];
    s->dicts[slot] = sd;
    slot_dict_unpin(old);
}

/* same-filled words ----------------------------------------------------------------------- */

static inline size_t fill_slot(uint64_t key, size_t cap)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & (cap - 1);
}

/* room for one more fill word (store lock held); -1 when out of memory, nothing changed */
static int fill_reserve(StoreObject *s)
{
    ASSERT_HELD(s->lock);
    if ((s->fill_count + 1) * 2 > s->fill_cap) {
        size_t ncap = s->fill_cap ? s->fill_cap * 2 : 64;
        uint64_t *k = calloc(ncap, 8), *v = calloc(ncap, 8);
        if (!k || !v) {
            free(k);
            free(v);
            return -1;
        }
        for (size_t i = 0; i < s->fill_cap; i++) {
            if (!s->fill_keys[i])
                continue;
            size_t j = fill_slot(s->fill_keys[i], ncap);
            while (k[j])
                j = (j + 1) & (ncap - 1);
            k[j] = s->fill_keys[i];
            v[j] = s->fill_vals[i];
        }
        free(s->fill_keys);
        free(s->fill_vals);
        s->fill_keys = k;
        s->fill_vals = v;
        s->fill_cap = ncap;
    }
    return 0;
}

static int fill_set(StoreObject *s, uint64_t pn, uint64_t word)
{
    if (fill_reserve(s) != 0)
        return -1;
    uint64_t key = pn + 1;
    size_t j = fill_slot(key, s->fill_cap);
    while (s->fill_keys[j] && s->fill_keys[j] != key)
        j = (j + 1) & (s->fill_cap - 1);
    if (!s->fill_keys[j])
        s->fill_count++;
    s->fill_keys[j] = key;
    s->fill_vals[j] = word;
    return 0;
}

static uint64_t fill_get(const StoreObject *s, uint64_t pn)
{
    ASSERT_HELD(s->lock);
    if (!s->fill_count)
        return 0;
    uint64_t key = pn + 1;
    size_t j = fill_slot(key, s->fill_cap);
    while (s->fill_keys[j]) {
        if (s->fill_keys[j] == key)
            return s->fill_vals[j];
        j = (j + 1) & (s->fill_cap - 1);
    }
    return 0;
}

static void fill_del(StoreObject *s, uint64_t pn)
{
    ASSERT_HELD(s->lock);
    if (!s->fill_count)
        return;
    uint64_t key = pn + 1;
    size_t mask = s->fill_cap - 1, j = fill_slot(key, s->fill_cap);
    while (s->fill_keys[j] && s->fill_keys[j] != key)
        j = (j + 1) & mask;
    if (!s->fill_keys[j])
        return;
    /* backward-shift deletion keeps every probe chain unbroken without tombstones */
    size_t hole = j;
    for (size_t i = (j + 1) & mask; s->fill_keys[i]; i = (i + 1) & mask) {
        size_t home = fill_slot(s->fill_keys[i], s->fill_cap);
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            s->fill_keys[hole] = s->fill_keys[i];
            s->fill_vals[hole] = s->fill_vals[i];
            hole = i;
        }
    }
    s->fill_keys[hole] = 0;
    s->fill_count--;
}

/* pages in flight (writeback, flush): a handful at a time --------------------------------- */

static Inflight *inflight_find(StoreObject *s, uint32_t pn)
{
    for (size_t i = 0; i < s->inflight_n; i++)
        if (s->inflight[i].pn == pn)
            return &s->inflight[i];
    return NULL;
}

/* register pn in flight (store lock held); -1 when out of memory */
static int inflight_add(StoreObject *s, uint32_t pn)
{
    ASSERT_HELD(s->lock);
    Inflight *f = inflight_find(s, pn);
    if (f) { /* another owner: its rewritten mark stays */
        f->owners++;
        return 0;
    }
    if (grow((void **)&s->inflight, &s->inflight_cap, s->inflight_n + 1, sizeof(Inflight)) != 0)
        return -1;
    s->inflight[s->inflight_n].pn = pn;
    s->inflight[s->inflight_n].owners = 1;
    s->inflight[s->inflight_n++].rewritten = 0;
    return 0;
}

/* take pn out of flight for one owner (store lock held): was it rewritten meanwhile (or not in
 * flight)? */
static int inflight_take(StoreObject *s, uint32_t pn)
{
    ASSERT_HELD(s->lock);
    Inflight *f = inflight_find(s, pn);
    if (!f)
        return 1;
    int rewritten = (int)f->rewritten;
    if (--f->owners == 0)
        *f = s->inflight[--s->inflight_n];
    return rewritten;
}

/* the index ------------------------------------------------------------------------------- */

static inline uint32_t store_now(const StoreObject *s)
{
    uint32_t fixed = __atomic_load_n(&s->fixed_now, __ATOMIC_RELAXED);
    if (fixed)
        return fixed;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double secs = (double)ts.tv_sec + ts.tv_nsec * 1e-9 - s->t0;
    long long n = (long long)secs + 1;
    return n > AGE_MASK ? AGE_MASK : (uint32_t)n;
}

/* store.py's _swap (store lock held; takes the pool lock unless pool_locked). -1 when the
 * old entry's handle is not live in the pool (nothing changed then). */
static int store_swap(StoreObject *s, uint32_t pn, uint32_t entry, int size, int pool_locked,
                      int keep_old)
{
    ASSERT_HELD(s->lock);
    if (s->inflight_n) {
        Inflight *f = inflight_find(s, pn);
        if (f)
            f->rewritten = 1;
    }
    uint32_t old = s->index[pn];
    if (old == SAME) {
        s->same_pages--;
        s->stored_pages--;
        fill_del(s, pn);
    } else if (old == BACKED) {
        s->bd_count--;
    } else if (old >= FIRST_HANDLE && keep_old) { /* another page still uses the object */
        s->stored_pages--;
    } else if (old >= FIRST_HANDLE) {
        if (!pool_locked)
            lock_take(s->pool->lock);
        int old_size = pool_free_locked(s->pool, old);
        if (!pool_locked)
            lock_give(s->pool->lock);
        if (old_size < 0)
            return -1;
        s->compr_data_size -= old_size;
        s->stored_pages--;
        if (old_size == PAGE_SIZE)
            s->huge_pages--;
    }
    s->index[pn] = entry;
    if (entry == BACKED) {
        s->bd_count++;
        return 0;
    }
    s->stored_pages++;
    if (entry == SAME) {
        s->same_pages++;
    } else {
        s->compr_data_size += size;
        if (size == PAGE_SIZE)
            s->huge_pages++;
    }
    return 0;
}

/* a same-filled page: *word* 512 times (out may sit at any alignment) */
static void fill_words(uint8_t *out, uint64_t word)
{
    if (!word) {
        memset(out, 0, PAGE_SIZE);
        return;
    }
    for (int i = 0; i < PAGE_SIZE; i += 8)
        memcpy(out + i, &word, 8);
}

/* the pool's memory, for the memory-limit checks (GIL released; the pool lock not held) */
static inline long long pool_bytes(StoreObject *s)
{
    lock_take(s->pool->lock);
    long long n = (long long)arena_pages_used(&s->pool->arena) * PAGE_SIZE;
    lock_give(s->pool->lock);
    return n;
}

/* a page whose old object the Python code must release (store lock held): recompressed (its
 * codec slot counts it) or sharing its object (dedup counts the references) */
static inline int python_owned(const StoreObject *s, uint32_t pn)
{
    ASSERT_HELD(s->lock);
    return s->index[pn] >= FIRST_HANDLE && (s->meta[pn] & (SLOT_MASK | SHARED));
}

/* outcomes of one page in the request loop */
enum { PAGE_DONE = 0, PAGE_PYTHON = 1, PAGE_TO_FILE = 2, PAGE_NOT_LIVE = -1, PAGE_CORRUPT = -2,
       PAGE_NOMEM = -3 };

/* store.py's _reject for a page that finds the pool at its memory limit, when there is a
 * backing file, GIL released: the page to the file under the file lock, then BACKED committed
 * under the store lock inside it, as there. PAGE_TO_FILE when done (the caller tells the
 * maintenance thread, on_pressure); PAGE_PYTHON, nothing counted, when the Python path must do
 * it: no backing file (a hard limit), an old object that is recompressed or shared, or a failed
 * write (which it counts and logs, keeping the page in the pool over its limit). */
static int store_to_file(StoreObject *s, uint32_t pn, const uint8_t *page, uint32_t stamp)
{
    if (!s->has_backing)
        return PAGE_PYTHON;
    int rc = PAGE_PYTHON;
    lock_take(s->file_lock);
    lock_take(s->lock);
    int owned = python_owned(s, pn);
    lock_give(s->lock);
    if (!owned && s->backing_fd >= 0 &&
        pwrite(s->backing_fd, page, PAGE_SIZE, (off_t)pn * PAGE_SIZE) == PAGE_SIZE) {
        lock_take(s->lock);
        if (!python_owned(s, pn) && store_swap(s, pn, BACKED, 0, 0, 0) == 0) {
            s->pool_limit_hit++;
            s->bd_writes++;
            s->meta[pn] = stamp & AGE_MASK; /* the file holds it: clean */
            rc = PAGE_TO_FILE;
        }
        lock_give(s->lock);
    }
    lock_give(s->file_lock);
    return rc;
}

/* write_page's fast path for a page already classified (prepare_page: *len* is PREP_SAME with
 * its fill *word*, the codec output's length at *out*, or PREP_FAILED), GIL released: a
 * same-filled page or one the pool takes. Returns PAGE_PYTHON for a page the Python path must
 * decide (memory limit, a reject, no room). */
static int store_prepared(StoreObject *s, uint32_t pn, const uint8_t *page, uint32_t stamp,
                          int len, const uint8_t *out, uint64_t word)
{
    if (len == PREP_SAME) {
        int rc = PAGE_DONE;
        lock_take(s->lock);
        if (python_owned(s, pn))
            rc = PAGE_PYTHON;
        else if (word && fill_reserve(s) != 0) /* before the swap frees the old contents */
            rc = PAGE_NOMEM;
        else if (store_swap(s, pn, SAME, 0, 0, 0) != 0)
            rc = PAGE_NOT_LIVE;
        else if (word)
            fill_set(s, pn, word); /* cannot fail: room was reserved */
        if (rc == PAGE_DONE)
            s->meta[pn] = stamp;
        lock_give(s->lock);
        return rc;
    }
    if (len < 0)
        return PAGE_PYTHON;
    if (s->mem_limit && pool_bytes(s) >= s->mem_limit)
        return store_to_file(s, pn, page, stamp);
    const uint8_t *payload = out;
    if (len >= raw_threshold(s->pool)) {
        if (s->huge_to_backing && s->has_backing && s->mem_limit && pool_bytes(s) >= s->low_water)
            return PAGE_PYTHON;
        payload = page;
        len = PAGE_SIZE;
    }
    int rc = PAGE_DONE;
    lock_take(s->lock);
    lock_take(s->pool->lock);
    uint64_t h = python_owned(s, pn) ? 0 : pool_store_locked(s->pool, payload, (size_t)len);
    if (!h) {
        rc = PAGE_PYTHON;
    } else if (store_swap(s, pn, (uint32_t)h, len, 1, 0) != 0) {
        pool_free_locked(s->pool, h);
        rc = PAGE_NOT_LIVE;
    } else {
        s->meta[pn] = stamp;
    }
    lock_give(s->pool->lock);
    lock_give(s->lock);
    return rc;
}

/* write_page's fast path, one page on this thread (GIL released); over the memory limit the
 * codec is not run at all (the Python path decides) */
static int store_page(StoreObject *s, uint32_t pn, const uint8_t *page, uint32_t stamp)
{
    uint8_t out[COMPRESS_BOUND];
    uint64_t word;
    int len;
    if (same_filled(page, &word))
        len = PREP_SAME;
    else if (s->mem_limit && pool_bytes(s) >= s->mem_limit)
        return store_to_file(s, pn, page, stamp);
    else
        len = compress_page(s->codec, s->level, page, out);
    return store_prepared(s, pn, page, stamp, len, out, word);
}

/* load_page's case of a recompressed page (store lock held on entry, let go here): its first
 * read since it was recompressed marks it (store.py's read_page) and is decoded here with the
 * slot's digested dictionary, pinned under the store lock and used after it is let go (so
 * _drop_slot or _set_slot cannot free it meanwhile). A second read (the page is to go back to
 * the write codec: the rewarm set), or a slot without a dictionary in C, is the Python path's. */
static int load_recompressed(StoreObject *s, uint32_t pn, uint32_t entry, uint32_t meta,
                             uint8_t *out, uint32_t now)
{
    if (meta & MARK || !s->dicts[(meta & SLOT_MASK) >> SLOT_SHIFT]) {
        lock_give(s->lock);
        return PAGE_PYTHON;
    }
    SlotDict *sd = slot_dict_pin(s, (int)((meta & SLOT_MASK) >> SLOT_SHIFT));
    uint8_t buf[PAGE_SIZE];
    s->meta[pn] = (meta & ~AGE_MASK) | MARK | now;
    lock_take(s->pool->lock);
    int len = pool_read_locked(s->pool, entry, buf);
    lock_give(s->pool->lock);
    if (len < 0)
        s->failed_reads++;
    lock_give(s->lock);
    /* decoded outside the store lock: the pin keeps the dictionary alive */
    int rc = PAGE_DONE;
    if (len < 0)
        rc = PAGE_NOT_LIVE;
    else if (len == PAGE_SIZE)
        memcpy(out, buf, PAGE_SIZE);
    else if (dict_decompress_page(sd->d, buf, len, out) != 0)
        rc = PAGE_CORRUPT;
    slot_dict_unpin(sd);
    if (rc == PAGE_CORRUPT) {
        lock_take(s->lock);
        s->failed_reads++;
        lock_give(s->lock);
    }
    return rc;
}

/* read_page's fast path, GIL released: PAGE_PYTHON for a page the Python path must read: a failed read
 * of the backing file, a recompressed page read a second time or whose slot has no dictionary
 * in C (store.py's read_page decodes it with its slot's codec). */
static int load_page(StoreObject *s, uint32_t pn, uint8_t *out, uint32_t now)
{
    uint8_t buf[PAGE_SIZE];
    lock_take(s->lock);
    uint32_t entry = s->index[pn];
    if (entry == SAME) {
        s->meta[pn] = (s->meta[pn] & ~AGE_MASK) | now;
        uint64_t word = fill_get(s, pn);
        lock_give(s->lock);
        fill_words(out, word);
        return PAGE_DONE;
    }
    if (entry < FIRST_HANDLE) {
        lock_give(s->lock);
        if (entry == EMPTY && !s->persistent) {
            memset(out, 0, PAGE_SIZE);
            return PAGE_DONE;
        }
        /* only in the backing file (written back, or never written in image mode): read
         * without the store lock, as store.py's _read_backing does (the index only moves a
         * page there), under the file lock, which _detach_backing takes before the file is
         * closed; a failed or short read goes to the Python path, which reads again and
         * reports it */
        ssize_t got = -1;
        lock_take(s->file_lock);
        if (s->backing_fd >= 0)
            got = pread(s->backing_fd, out, PAGE_SIZE, (off_t)pn * PAGE_SIZE);
        lock_give(s->file_lock);
        if (got != PAGE_SIZE)
            return PAGE_PYTHON;
        lock_take(s->lock);
        s->bd_reads++;
        lock_give(s->lock);
        return PAGE_DONE;
    }
    uint32_t meta = s->meta[pn];
    if (meta & SLOT_MASK)
        return load_recompressed(s, pn, entry, meta, out, now);
    s->meta[pn] = (meta & ~AGE_MASK) | now;
    lock_take(s->pool->lock);
    int len = pool_read_locked(s->pool, entry, buf);
    lock_give(s->pool->lock);
    if (len < 0) {
        s->failed_reads++;
        lock_give(s->lock);
        return PAGE_NOT_LIVE;
    }
    lock_give(s->lock);
    if (len == PAGE_SIZE) {
        memcpy(out, buf, PAGE_SIZE);
        return PAGE_DONE;
    }
    if (decompress_page(s->codec, buf, len, out) != 0) {
        lock_take(s->lock);
        s->failed_reads++;
        lock_give(s->lock);
        return PAGE_CORRUPT;
    }
    return PAGE_DONE;
}

/* Python face of the store ---------------------------------------------------------------- */

static int store_check(StoreObject *s)
{
    if (!s->ready) {
        PyErr_SetString(PyExc_RuntimeError, "store not set up");
        return -1;
    }
    return pool_check(s->pool);
}

static PyObject *Store_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    StoreObject *s = (StoreObject *)new_with_lock(type, offsetof(StoreObject, lock));
    if (!s)
        return NULL;
    s->file_lock = (LockObject *)PyObject_CallNoArgs((PyObject *)&LockType);
    if (!s->file_lock) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

static int Store_traverse(StoreObject *s, visitproc visit, void *arg)
{
    Py_VISIT(s->pool);
    if (s->index_buf.obj)
        Py_VISIT(s->index_buf.obj);
    if (s->meta_buf.obj)
        Py_VISIT(s->meta_buf.obj);
    if (s->slot_pages_buf.obj)
        Py_VISIT(s->slot_pages_buf.obj);
    return 0;
}

static int Store_clear(StoreObject *s)
{
    if (s->index_buf.obj)
        PyBuffer_Release(&s->index_buf);
    if (s->meta_buf.obj)
        PyBuffer_Release(&s->meta_buf);
    if (s->slot_pages_buf.obj)
        PyBuffer_Release(&s->slot_pages_buf);
    s->index = s->meta = NULL;
    s->slot_pages = NULL;
    s->ready = 0;
    Py_CLEAR(s->pool);
    return 0;
}

static void Store_dealloc(StoreObject *s)
{
    PyObject_GC_UnTrack(s);
    /* the Python subclass's instance dict is cleared by subtype_dealloc before this runs */
    Store_clear(s);
    free(s->fill_keys);
    free(s->fill_vals);
    free(s->inflight);
    for (int i = 0; i < SLOTS; i++) {
        slot_dict_unpin(s->dicts[i]);
        s->dicts[i] = NULL;
    }
    Py_CLEAR(s->lock);
    Py_CLEAR(s->file_lock);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int get_u32_buffer(PyObject *obj, Py_buffer *buf, uint64_t npages, const char *what)
{
    if (PyObject_GetBuffer(obj, buf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0)
        return -1;
    if (buf->itemsize != 4 || (uint64_t)buf->len != npages * 4 || !buf->format ||
        (strcmp(buf->format, "I") != 0 && strcmp(buf->format, "=I") != 0 &&
         strcmp(buf->format, "<I") != 0)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %llu uint32 items", what,
                     (unsigned long long)npages);
        PyBuffer_Release(buf);
        return -1;
    }
    return 0;
}

static PyObject *Store_setup(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"index", "meta", "pool", "codec", "level", "mem_limit",
                             "low_water", "huge_to_backing", "persistent", "backing_fd",
                             "t0", "slot_pages", NULL};
    PyObject *index, *meta, *pool, *slot_pages;
    const char *codec;
    int level, huge, persistent, backing_fd;
    long long mem_limit, low_water;
    double t0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO!siLLppidO", kwlist, &index, &meta,
                                     &PoolType, &pool, &codec, &level, &mem_limit, &low_water,
                                     &huge, &persistent, &backing_fd, &t0, &slot_pages))
        return NULL;
    if (s->ready) {
        PyErr_SetString(PyExc_RuntimeError, "store already set up");
        return NULL;
    }
    if (!strcmp(codec, "lz4"))
        s->codec = CODEC_LZ4;
    else if (!strcmp(codec, "zstd"))
        s->codec = CODEC_ZSTD;
    else if (!strcmp(codec, "none"))
        s->codec = CODEC_NONE;
    else {
        PyErr_Format(PyExc_ValueError, "the native engine has no codec %s", codec);
        return NULL;
    }
    Py_ssize_t n = PyObject_Length(index);
    if (n <= 0)
        return n < 0 ? NULL : PyErr_Format(PyExc_ValueError, "a store needs at least one page");
    if ((unsigned long long)n > UINT32_MAX)
        return PyErr_Format(PyExc_ValueError, "an image holds at most %u pages", UINT32_MAX);
    s->npages = (uint64_t)n;
    if (get_u32_buffer(index, &s->index_buf, s->npages, "index") != 0)
        return NULL;
    if (get_u32_buffer(meta, &s->meta_buf, s->npages, "meta") != 0) {
        PyBuffer_Release(&s->index_buf);
        return NULL;
    }
    if (PyObject_GetBuffer(slot_pages, &s->slot_pages_buf,
                           PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0 ||
        s->slot_pages_buf.itemsize != 8 || s->slot_pages_buf.len != SLOTS * 8 ||
        !s->slot_pages_buf.format || !strchr("lq", s->slot_pages_buf.format[
            s->slot_pages_buf.format[0] == '<' || s->slot_pages_buf.format[0] == '=' ? 1 : 0])) {
        if (s->slot_pages_buf.obj)
            PyBuffer_Release(&s->slot_pages_buf);
        PyBuffer_Release(&s->index_buf);
        PyBuffer_Release(&s->meta_buf);
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "slot_pages: expected %d int64 items", SLOTS);
        return NULL;
    }
    s->slot_pages = s->slot_pages_buf.buf;
    s->index = s->index_buf.buf;
    s->meta = s->meta_buf.buf;
    Py_INCREF(pool);
    s->pool = (PoolObject *)pool;
    s->level = level;
    s->mem_limit = mem_limit;
    s->low_water = low_water;
    s->huge_to_backing = huge;
    s->persistent = persistent;
    s->has_backing = backing_fd >= 0;
    s->backing_fd = backing_fd;
    s->t0 = t0;
    s->ready = 1;
    Py_RETURN_NONE;
}

/* Is [offset, offset + len) inside the image? Written so that nothing can wrap: an offset near
 * 2**64 is refused before any sum is formed (every entry point that takes a byte range checks
 * it here, the kernel's offsets included). */
static inline int range_ok(const StoreObject *s, unsigned long long offset, unsigned long long len)
{
    unsigned long long size = (unsigned long long)s->npages * PAGE_SIZE;
    return offset <= size && len <= size - offset;
}

/* PyArg "O&" converter of a byte offset: any int; one below 0 or past 2**64 - 1 becomes
 * ULLONG_MAX, which range_ok refuses (never masked into a smaller offset) */
static int offset_arg(PyObject *obj, void *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "an offset is an int, not %.100s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return 0;
        PyErr_Clear();
    }
    *(unsigned long long *)out = v;
    return 1;
}

static PyObject *storage_failure(const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (msg) {
        PyErr_SetObject(StorageFailureError, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

/* Python-side failure of one page: raise it (GIL held) */
static void page_error(int rc, uint32_t pn)
{
    if (rc == PAGE_NOT_LIVE)
        storage_failure("page %u: its pool object is gone (handle not live)", pn);
    else if (rc == PAGE_CORRUPT)
        storage_failure("decoding page %u: the payload does not decode to a page", pn);
    else
        PyErr_NoMemory();
}

/* Copy bytes returned by a Python callback into a page buffer (GIL held) */
static int take_page(PyObject *res, uint8_t *dst)
{
    if (!res)
        return -1;
    Py_buffer b;
    if (PyObject_GetBuffer(res, &b, PyBUF_SIMPLE) != 0) {
        Py_DECREF(res);
        return -1;
    }
    int ok = b.len == PAGE_SIZE;
    if (ok)
        memcpy(dst, b.buf, PAGE_SIZE);
    PyBuffer_Release(&b);
    Py_DECREF(res);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "a page read back is not 4096 bytes");
        return -1;
    }
    return 0;
}

/* A request failed with an exception that is not a StoreError (a bug below, or a callback's
 * surprise): count it and raise StorageFailure from it, as PageStore.write/read do (GIL held). */
static PyObject *wrap_failure(StoreObject *s, int writing, unsigned long long offset,
                              Py_ssize_t size)
{
    if (!PyErr_Occurred() || PyErr_ExceptionMatches(StoreErrorBase))
        return NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb)
        PyException_SetTraceback(value, tb);
    lock_wait(s->lock);
    if (writing)
        s->failed_writes++;
    else
        s->failed_reads++;
    lock_give(s->lock);
    PyObject *msg = writing ? PyUnicode_FromFormat("writing at %llu: %R", offset, value)
                            : PyUnicode_FromFormat("reading %zd bytes at %llu: %R", size, offset,
                                                   value);
    PyObject *exc = msg ? PyObject_CallOneArg(StorageFailureError, msg) : NULL;
    Py_XDECREF(msg);
    if (exc) {
        /* SetCause and SetContext each steal a reference: one new one for each, and the one
         * PyErr_Fetch gave us is dropped below */
        PyException_SetCause(exc, Py_NewRef(value));
        PyException_SetContext(exc, Py_NewRef(value));
        PyErr_SetObject(StorageFailureError, exc);
        Py_DECREF(exc);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return NULL;
}

/* write(offset, data, stamp=0): the whole write request, the page loop
 * with the GIL released except for the rare page handed back to Python */
static PyObject *Store_cwrite(StoreObject *s, PyObject *args)
{
    unsigned long long offset;
    unsigned long stamp = 0;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "O&y*|k", offset_arg, &offset, &data, &stamp))
        return NULL;
    if (lock_held(s->lock)) { /* the loop takes it page by page: it would wait for itself */
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_RuntimeError, "write: called with the store lock held");
        return NULL;
    }
    s->requests++;
    if (store_check(s) != 0 || !range_ok(s, offset, (unsigned long long)data.len)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "write of %zd bytes at %llu: past the end of the image",
                         data.len, offset);
        PyBuffer_Release(&data);
        return NULL;
    }
    const uint8_t *src = data.buf;
    size_t left = (size_t)data.len;
    uint32_t pn = (uint32_t)(offset / PAGE_SIZE);
    size_t head = offset % PAGE_SIZE;
    uint8_t tmp[PAGE_SIZE];
    PyObject *failed = NULL; /* set when a page fails: the GIL is held then */
    int pressure = 0;        /* a page went to the file for the memory limit: on_pressure told */
    PyThreadState *ts = PyEval_SaveThread();
    uint32_t now = store_now(s);
    if (!stamp)
        stamp = now | (s->persistent ? DIRTY : 0);
    /* an aligned request of many whole pages: classify and compress them on every core first,
     * BATCH_MAX pages at a time (each thread's scratch holds one such batch) */
    uint32_t first = pn, nprep = 0;
    Scratch *sc = NULL;
    if (!head && left / PAGE_SIZE >= (size_t)__atomic_load_n(&batch_min_pages, __ATOMIC_RELAXED) &&
        __atomic_load_n(&workers_wanted, __ATOMIC_RELAXED) &&
        (sc = scratch_get()) != NULL)
        sc->busy = 1;
    while (left) {
        if (sc && pn - first >= nprep &&
            left / PAGE_SIZE >= (size_t)__atomic_load_n(&batch_min_pages, __ATOMIC_RELAXED)) {
            first = pn;
            nprep = left / PAGE_SIZE < BATCH_MAX ? (uint32_t)(left / PAGE_SIZE) : BATCH_MAX;
            batch_prepare(sc, src, nprep, s->codec, s->level);
        }
        size_t n = PAGE_SIZE - head < left ? PAGE_SIZE - head : left;
        const uint8_t *page = src;
        int rc;
        if (n < PAGE_SIZE) { /* a partial page: read, modify, write */
            rc = load_page(s, pn, tmp, now);
            if (rc == PAGE_PYTHON) {
                PyEval_RestoreThread(ts);
                if (take_page(PyObject_CallMethod((PyObject *)s, "_read_slow", "I", pn), tmp)) {
                    failed = Py_None;
                    break;
                }
                ts = PyEval_SaveThread();
            } else if (rc != PAGE_DONE) {
                PyEval_RestoreThread(ts);
                page_error(rc, pn);
                failed = Py_None;
                break;
            }
            memcpy(tmp + head, src, n);
            page = tmp;
        }
        if (pn - first < nprep) {
            uint32_t i = pn - first;
            rc = store_prepared(s, pn, page, (uint32_t)stamp, sc->lens[i],
                                sc->out + (size_t)i * COMPRESS_BOUND, sc->words[i]);
        } else {
            rc = store_page(s, pn, page, (uint32_t)stamp);
        }
        if (rc == PAGE_TO_FILE) {
            if (!pressure) { /* the first such page: wake the maintenance thread (_encode's) */
                pressure = 1;
                PyEval_RestoreThread(ts);
                PyObject *r = PyObject_CallMethod((PyObject *)s, "on_pressure", NULL);
                if (!r) {
                    failed = Py_None;
                    break;
                }
                Py_DECREF(r);
                ts = PyEval_SaveThread();
            }
        } else if (rc == PAGE_PYTHON) {
            PyEval_RestoreThread(ts);
            PyObject *r = PyObject_CallMethod((PyObject *)s, "_write_slow", "Iy#k", pn,
                                              (const char *)page, (Py_ssize_t)PAGE_SIZE, stamp);
            if (!r) {
                failed = Py_None;
                break;
            }
            Py_DECREF(r);
            ts = PyEval_SaveThread();
        } else if (rc != PAGE_DONE) {
            PyEval_RestoreThread(ts);
            page_error(rc, pn);
            failed = Py_None;
            break;
        }
        src += n;
        left -= n;
        head = 0;
        pn++;
    }
    if (!failed)
        PyEval_RestoreThread(ts);
    if (sc)
        sc->busy = 0;
    PyBuffer_Release(&data);
    if (failed)
        return wrap_failure(s, 1, offset, 0);
    Py_RETURN_NONE;
}

/* read(offset, size) -> bytes: the whole read request, GIL released between callbacks */
static PyObject *Store_cread(StoreObject *s, PyObject *args)
{
    unsigned long long offset;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "O&n", offset_arg, &offset, &size) || store_check(s) != 0)
        return NULL;
    if (lock_held(s->lock))
        return PyErr_Format(PyExc_RuntimeError, "read: called with the store lock held");
    s->requests++;
    if (size < 0 || !range_ok(s, offset, (unsigned long long)size)) {
        PyErr_Format(PyExc_ValueError, "read of %zd bytes at %llu: past the end of the image",
                     size, offset);
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (!result || !size)
        return result;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(result);
    size_t left = (size_t)size;
    uint32_t pn = (uint32_t)(offset / PAGE_SIZE);
    size_t head = offset % PAGE_SIZE;
    uint8_t tmp[PAGE_SIZE];
    int failed = 0;
    PyThreadState *ts = PyEval_SaveThread();
    uint32_t now = store_now(s);
    while (left) {
        size_t n = PAGE_SIZE - head < left ? PAGE_SIZE - head : left;
        uint8_t *out = n == PAGE_SIZE ? dst : tmp; /* whole pages decode in place */
        int rc = load_page(s, pn, out, now);
        if (rc == PAGE_PYTHON) {
            PyEval_RestoreThread(ts);
            if (take_page(PyObject_CallMethod((PyObject *)s, "_read_slow", "I", pn), out)) {
                failed = 1;
                break;
            }
            ts = PyEval_SaveThread();
        } else if (rc != PAGE_DONE) {
            PyEval_RestoreThread(ts);
            page_error(rc, pn);
            failed = 1;
            break;
        }
        if (out == tmp)
            memcpy(dst, tmp + head, n);
        dst += n;
        left -= n;
        head = 0;
        pn++;
    }
    if (!failed)
        PyEval_RestoreThread(ts);
    if (failed) {
        Py_DECREF(result);
        return wrap_failure(s, 0, offset, size);
    }
    return result;
}

static int parse_pn(StoreObject *s, PyObject *arg, uint32_t *pn)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v >= s->npages) {
        PyErr_Format(PyExc_IndexError, "page %llu is past the end of the image", v);
        return -1;
    }
    *pn = (uint32_t)v;
    return 0;
}

/* a sequence of page numbers as a PyMem array at *out*: its length, or -1 with an error set */
static Py_ssize_t parse_pns(StoreObject *s, PyObject *seq, uint32_t **out)
{
    PyObject *fast = PySequence_Fast(seq, "indices: a sequence of page numbers");
    if (!fast)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    uint32_t *pns = PyMem_Malloc((size_t)(count ? count : 1) * sizeof(uint32_t));
    if (!pns) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (parse_pn(s, PySequence_Fast_GET_ITEM(fast, i), &pns[i]) != 0) {
            PyMem_Free(pns);
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    *out = pns;
    return count;
}

/* _swap_entry(pn, entry, size, keep_old=False): store.py's _swap of the index entry and the
 * counters (the caller holds the store lock; native.py's _swap keeps the slot and dedup counts) */
static PyObject *Store_swap(StoreObject *s, PyObject *args)
{
    PyObject *pnobj;
    unsigned long entry;
    int size, keep_old = 0;
    uint32_t pn;
    if (!PyArg_ParseTuple(args, "Oki|p", &pnobj, &entry, &size, &keep_old) || store_check(s) ||
        require_held(s->lock, "_swap_entry") || parse_pn(s, pnobj, &pn))
        return NULL;
    if (lock_enter(s->pool->lock))
        return NULL;
    int rc = store_swap(s, pn, (uint32_t)entry, size, 1, keep_old);
    lock_give(s->pool->lock);
    if (rc)
        return storage_failure("page %u: its pool object is gone (handle not live)", pn);
    Py_RETURN_NONE;
}

/* _peek(pn) -> (entry, raw payload | fill page | None), registering pn in flight (store.py's
 * _page_of without the decompression) */
static PyObject *Store_peek(StoreObject *s, PyObject *arg)
{
    uint32_t pn;
    if (store_check(s) || parse_pn(s, arg, &pn))
        return NULL;
    uint8_t buf[PAGE_SIZE];
    int len = -2;
    if (lock_enter(s->lock))
        return NULL;
    if (inflight_add(s, pn) != 0) {
        lock_give(s->lock);
        return PyErr_NoMemory();
    }
    uint32_t entry = s->index[pn];
    uint64_t word = 0;
    if (entry == SAME) {
        word = fill_get(s, pn);
        len = PAGE_SIZE;
    } else if (entry >= FIRST_HANDLE) {
        lock_wait(s->pool->lock); /* the GIL is held here: never wait for a lock with it */
        len = pool_read_locked(s->pool, entry, buf);
        lock_give(s->pool->lock);
        if (len == -1) /* raised below: nobody will take the page out of flight */
            inflight_take(s, pn);
    }
    lock_give(s->lock);
    if (entry == SAME)
        fill_words(buf, word);
    if (len == -1)
        return not_live(entry);
    if (len == -2)
        return Py_BuildValue("(kO)", (unsigned long)entry, Py_None);
    return Py_BuildValue("(ky#)", (unsigned long)entry, (const char *)buf, (Py_ssize_t)len);
}

/* _rewritten(pn) -> bool: take pn out of flight (the caller holds the store lock) */
static PyObject *Store_rewritten(StoreObject *s, PyObject *arg)
{
    uint32_t pn;
    if (store_check(s) || require_held(s->lock, "_rewritten") || parse_pn(s, arg, &pn))
        return NULL;
    return PyBool_FromLong(inflight_take(s, pn));
}

/* _was_rewritten(pn) -> bool: like _rewritten, but pn stays in flight (store lock held) */
static PyObject *Store_was_rewritten(StoreObject *s, PyObject *arg)
{
    uint32_t pn;
    if (store_check(s) || require_held(s->lock, "_was_rewritten") || parse_pn(s, arg, &pn))
        return NULL;
    Inflight *f = inflight_find(s, pn);
    return PyBool_FromLong(!f || f->rewritten);
}

/* _fill_set(pn, word): keep pn's same-filled word (store lock held) */
static PyObject *Store_fill_set(StoreObject *s, PyObject *args)
{
    PyObject *pnobj;
    unsigned long long word;
    uint32_t pn;
    if (!PyArg_ParseTuple(args, "OK", &pnobj, &word) || store_check(s) ||
        require_held(s->lock, "_fill_set") || parse_pn(s, pnobj, &pn))
        return NULL;
    if (word && fill_set(s, pn, word) != 0)
        return PyErr_NoMemory();
    if (!word)
        fill_del(s, pn);
    Py_RETURN_NONE;
}

/* _fill_word(pn) -> the same-filled word kept for pn, 0 when none is (store lock held) */
static PyObject *Store_fill_word(StoreObject *s, PyObject *arg)
{
    uint32_t pn;
    if (store_check(s) || require_held(s->lock, "_fill_word") || parse_pn(s, arg, &pn))
        return NULL;
    return PyLong_FromUnsignedLongLong(fill_get(s, pn));
}

/* recompression ---------------------------------------------------------------------------- */

static int parse_slot(PyObject *obj, int *slot)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 1 || v >= SLOTS) {
        PyErr_Format(PyExc_ValueError, "slot %ld out of range 1..%d", v, SLOTS - 1);
        return -1;
    }
    *slot = (int)v;
    return 0;
}

/* _set_slot(slot, level, dictionary): the digested dictionary the compiled recompression writes
 * slot *slot* with; digested with the GIL released and no lock held (it takes a while at high
 * levels), then swapped in under the store lock, which the caller must not hold */
static PyObject *Store_set_slot(StoreObject *s, PyObject *args)
{
    PyObject *slotobj;
    int slot, level;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "Oiy*", &slotobj, &level, &b))
        return NULL;
    if (store_check(s) || parse_slot(slotobj, &slot)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    ZSTD_CDict *cd;
    ZSTD_DDict *dd;
    Py_BEGIN_ALLOW_THREADS
    cd = ZSTD_createCDict(b.buf, (size_t)b.len, level);
    dd = ZSTD_createDDict(b.buf, (size_t)b.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    SlotDict *sd = cd && dd ? slot_dict_new(cd, dd) : NULL;
    if (!sd) {
        ZSTD_freeCDict(cd);
        ZSTD_freeDDict(dd);
        return PyErr_NoMemory();
    }
    if (lock_enter(s->lock) != 0) {
        slot_dict_unpin(sd);
        return NULL;
    }
    slot_dict_set(s, slot, sd);
    lock_give(s->lock);
    Py_RETURN_NONE;
}

/* _drop_slot(slot): slot *slot* is gone (store lock held by the caller); its dictionary goes
 * with the last reference (a step or a read that pinned it finishes with it first) */
static PyObject *Store_drop_slot(StoreObject *s, PyObject *arg)
{
    int slot;
    if (store_check(s) || require_held(s->lock, "_drop_slot") || parse_slot(arg, &slot))
        return NULL;
    slot_dict_set(s, slot, NULL);
    Py_RETURN_NONE;
}

/* outcomes of a background step on one page (recode_page, writeback_one) */
enum { STEP_DONE, STEP_SKIP, STEP_GONE, STEP_PYTHON, STEP_NOMEM };

/* A background step's claim of page pn (store lock held, and still held on return): STEP_DONE
 * with pn in flight and its object copied to *payload* (*len* bytes, *entry* its handle);
 * STEP_PYTHON, nothing changed, for a page the Python path must decide (recompressed or shared
 * already: a codec slot or dedup counts it; a handle not live: the Python path raises it);
 * STEP_GONE when the pool holds no object for pn; STEP_NOMEM. */
static int claim_page(StoreObject *s, uint32_t pn, uint32_t *entry, uint8_t *payload, int *len)
{
    ASSERT_HELD(s->lock);
    *entry = s->index[pn];
    if (*entry >= FIRST_HANDLE && (s->meta[pn] & (SLOT_MASK | SHARED)))
        return STEP_PYTHON;
    if (*entry < FIRST_HANDLE) /* _claim: nothing held in the pool */
        return STEP_GONE;
    if (inflight_add(s, pn) != 0)
        return STEP_NOMEM;
    lock_take(s->pool->lock);
    *len = pool_read_locked(s->pool, *entry, payload);
    lock_give(s->pool->lock);
    if (*len < 0) {
        inflight_take(s, pn);
        return STEP_PYTHON;
    }
    return STEP_DONE;
}

/* store.py's _recode of page pn from the write codec into recompression slot *slot*, GIL
 * released: the store lock held twice (claim, commit), the codec work in between without it
 * and the slot's dictionary pinned for it. Pages _recode would treat differently from a page
 * of the write codec (recompressed, shared, a handle not live) go back to Python
 * (STEP_PYTHON), untouched. */
static int recode_page(StoreObject *s, uint32_t pn, int slot, int min_gain, uint8_t *payload,
                       uint8_t *page, uint8_t *out)
{
    uint32_t entry;
    int len;
    lock_take(s->lock);
    int claimed = claim_page(s, pn, &entry, payload, &len);
    SlotDict *sd = claimed == STEP_DONE ? slot_dict_pin(s, slot) : NULL;
    if (claimed == STEP_DONE && !sd) {
        inflight_take(s, pn);
        claimed = STEP_PYTHON;
    }
    lock_give(s->lock);
    if (claimed != STEP_DONE)
        return claimed;

    const uint8_t *src = payload;
    int n = -1;
    if (len == PAGE_SIZE || decompress_page(s->codec, payload, len, page) == 0) {
        if (len != PAGE_SIZE)
            src = page;
        n = dict_compress_page(sd->c, src, out);
    }
    uint64_t h = 0;
    const uint8_t *neu = out;
    if (n >= 0) {
        if (n >= raw_threshold(s->pool)) {
            neu = src;
            n = PAGE_SIZE;
        }
        if (n + min_gain <= len) {
            lock_take(s->pool->lock);
            h = pool_store_locked(s->pool, neu, (size_t)n);
            lock_give(s->pool->lock);
        }
    }

    int rc;
    lock_take(s->lock);
    uint32_t meta = s->meta[pn];
    /* a slot dropped (or given another dictionary) meanwhile must not gain the page */
    int slot_changed = s->dicts[slot] != sd;
    if (inflight_take(s, pn) || s->index[pn] != entry || (meta & SHARED) || slot_changed) {
        if (h) {
            lock_take(s->pool->lock);
            pool_free_locked(s->pool, h);
            lock_give(s->pool->lock);
        }
        rc = STEP_GONE;
    } else if (!h) {
        s->meta[pn] = meta | MARK;
        s->recompress_not_worth++;
        rc = STEP_SKIP;
    } else if (store_swap(s, pn, (uint32_t)h, n, 0, 0) != 0) {
        lock_take(s->pool->lock);
        pool_free_locked(s->pool, h);
        lock_give(s->pool->lock);
        rc = STEP_PYTHON; /* the old handle is not live: the Python path raises it */
    } else {
        s->meta[pn] = (meta & (AGE_MASK | DIRTY)) | (uint32_t)slot << SLOT_SHIFT;
        s->slot_pages[slot]++;
        s->recompressions++;
        s->recompress_saved_bytes += len - n;
        rc = STEP_DONE;
    }
    lock_give(s->lock);
    slot_dict_unpin(sd);
    return rc;
}

/* The batch calls' loop: *step* on each page of the sequence *seq* with the GIL released, in
 * order, up to the first page the Python path must decide: (done, at), *at* its position in
 * the sequence (untouched; the caller runs it and calls again with the rest), -1 when every page
 * was done here. Stopping there keeps the reference's order of placements. */
typedef int (*PageStep)(StoreObject *s, uint32_t pn, const void *arg, uint8_t *bufs);

static PyObject *run_batch(StoreObject *s, PyObject *seq, PageStep step, const void *arg,
                           size_t bufsize)
{
    uint32_t *pns;
    Py_ssize_t count = parse_pns(s, seq, &pns);
    if (count < 0)
        return NULL;
    long done = 0;
    Py_ssize_t at = -1;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *bufs = malloc(bufsize);
    if (!bufs)
        nomem = 1;
    for (Py_ssize_t i = 0; i < count && !nomem; i++) {
        int rc = step(s, pns[i], arg, bufs);
        done += rc == STEP_DONE;
        nomem = rc == STEP_NOMEM;
        if (rc == STEP_PYTHON) {
            at = i;
            break;
        }
    }
    free(bufs);
    Py_END_ALLOW_THREADS
    PyMem_Free(pns);
    if (nomem)
        return PyErr_NoMemory();
    return Py_BuildValue("(ln)", done, at);
}

typedef struct {
    int slot, min_gain;
} RecodeArgs;

static int recode_step(StoreObject *s, uint32_t pn, const void *arg, uint8_t *bufs)
{
    const RecodeArgs *r = arg;
    return recode_page(s, pn, r->slot, r->min_gain, bufs, bufs + PAGE_SIZE, bufs + 2 * PAGE_SIZE);
}

/* _recompress_batch(indices, slot, min_gain) -> (done, at): recompress_page for each page in C
 * (see run_batch) */
static PyObject *Store_recompress_batch(StoreObject *s, PyObject *args)
{
    PyObject *seq;
    RecodeArgs r;
    if (!PyArg_ParseTuple(args, "Oii", &seq, &r.slot, &r.min_gain) || store_check(s))
        return NULL;
    if (r.slot < 1 || r.slot >= SLOTS)
        return PyErr_Format(PyExc_ValueError, "slot %d out of range 1..%d", r.slot, SLOTS - 1);
    return run_batch(s, seq, recode_step, &r, (size_t)PAGE_SIZE * 2 + COMPRESS_BOUND);
}

/* Writeback ------------------------------------------------------------------------------- */

/* store.py's writeback_page for one page, GIL released: claim it (in flight) and copy its
 * object out under the store lock, decode it unlocked, write it to the backing file under the
 * file lock unless it was rewritten meanwhile (or is clean in image mode: the file has it),
 * then commit BACKED under the store lock unless it was rewritten. STEP_PYTHON, with nothing
 * changed, for a page the Python path must do (recompressed or shared, or a failure it must
 * count and log: a handle not live, a payload that does not decode, a failed write). */
static int writeback_one(StoreObject *s, uint32_t pn, uint8_t *payload, uint8_t *page)
{
    uint32_t entry;
    int len;
    lock_take(s->lock);
    int claimed = claim_page(s, pn, &entry, payload, &len);
    int clean = s->persistent && !(s->meta[pn] & DIRTY);
    lock_give(s->lock);
    if (claimed != STEP_DONE) /* STEP_GONE: the reference's claim and let-go, nothing moved */
        return claimed;

    const uint8_t *src = payload;
    int failed = 0;
    if (len != PAGE_SIZE) {
        failed = decompress_page(s->codec, payload, len, page) != 0;
        src = page;
    }
    if (!failed && !clean) {
        lock_take(s->file_lock);
        lock_take(s->lock);
        Inflight *f = inflight_find(s, pn);
        int rewritten = !f || f->rewritten;
        lock_give(s->lock);
        if (!rewritten)
            failed = s->backing_fd < 0 ||
                     pwrite(s->backing_fd, src, PAGE_SIZE, (off_t)pn * PAGE_SIZE) != PAGE_SIZE;
        lock_give(s->file_lock);
    }

    int rc;
    lock_take(s->lock);
    if (inflight_take(s, pn) || s->index[pn] != entry) {
        rc = STEP_GONE; /* rewritten while we wrote: the pool copy is newer */
    } else if (failed || (s->meta[pn] & (SLOT_MASK | SHARED)) ||
               store_swap(s, pn, BACKED, 0, 0, 0) != 0) {
        rc = STEP_PYTHON;
    } else {
        s->meta[pn] &= AGE_MASK; /* clean, no codec */
        s->written_back_pages++;
        if (!clean)
            s->bd_writes++;
        rc = STEP_DONE;
    }
    lock_give(s->lock);
    return rc;
}

static int writeback_step(StoreObject *s, uint32_t pn, const void *arg, uint8_t *bufs)
{
    return writeback_one(s, pn, bufs, bufs + PAGE_SIZE);
}

/* _writeback_batch(indices) -> (done, at): writeback_page for each page in C (see run_batch) */
static PyObject *Store_writeback_batch(StoreObject *s, PyObject *seq)
{
    if (store_check(s))
        return NULL;
    if (!s->has_backing)
        return PyErr_Format(PyExc_RuntimeError, "no backing file");
    return run_batch(s, seq, writeback_step, NULL, (size_t)PAGE_SIZE * 2);
}

/* _detach_backing(): C stops using the backing file's descriptor (before the file is closed):
 * taken under the file lock, so no read or write of it is in progress */
static PyObject *Store_detach_backing(StoreObject *s, PyObject *unused)
{
    if (lock_enter(s->file_lock))
        return NULL;
    if (lock_enter(s->lock)) {
        lock_give(s->file_lock);
        return NULL;
    }
    s->backing_fd = -1;
    lock_give(s->lock);
    lock_give(s->file_lock);
    Py_RETURN_NONE;
}

/* _set_clock(t0, fixed_now): store.py's clock (_t0, and a fixed now() when not 0) */
static PyObject *Store_set_clock(StoreObject *s, PyObject *args)
{
    double t0;
    unsigned long fixed;
    if (!PyArg_ParseTuple(args, "dk", &t0, &fixed))
        return NULL;
    if (fixed > AGE_MASK)
        return PyErr_Format(PyExc_ValueError, "a clock reading is at most %u", AGE_MASK);
    s->t0 = t0;
    __atomic_store_n(&s->fixed_now, (uint32_t)fixed, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *Store_get_lock(StoreObject *s, void *c)
{
    Py_INCREF(s->lock);
    return (PyObject *)s->lock;
}

static PyObject *Store_get_file_lock(StoreObject *s, void *c)
{
    Py_INCREF(s->file_lock);
    return (PyObject *)s->file_lock;
}

static PyObject *Store_get_inflight(StoreObject *s, void *c)
{
    if (lock_enter(s->lock)) /* a background batch changes it with the GIL released */
        return NULL;
    size_t n = s->inflight_n;
    lock_give(s->lock);
    return PyLong_FromSize_t(n);
}

static PyGetSetDef Store_getset[] = {
    {"_lock", (getter)Store_get_lock, NULL, "the store lock", NULL},
    {"_file_lock_c", (getter)Store_get_file_lock, NULL, "the backing-file write lock", NULL},
    {"_inflight_count", (getter)Store_get_inflight, NULL, "pages in flight (takes the store lock)",
     NULL},
    {NULL},
};

#define COUNTER(name) {#name, T_LONGLONG, offsetof(StoreObject, name), 0, NULL}
static PyMemberDef Store_members[] = {
    COUNTER(stored_pages), COUNTER(same_pages), COUNTER(huge_pages), COUNTER(compr_data_size),
    COUNTER(failed_reads), COUNTER(failed_writes), COUNTER(invalid_io), COUNTER(bd_count),
    COUNTER(bd_reads), COUNTER(bd_writes), COUNTER(bd_errors), COUNTER(written_back_pages),
    COUNTER(pool_limit_hit), COUNTER(reject_compress_fail), COUNTER(reject_compress_poor),
    COUNTER(reject_alloc_fail), COUNTER(reject_reclaim_fail), COUNTER(requests),
    COUNTER(recompressions), COUNTER(recompress_saved_bytes), COUNTER(recompress_not_worth),
    {NULL},
};
#undef COUNTER

static PyMethodDef Store_methods[] = {
    {"_setup", (PyCFunction)(void (*)(void))Store_setup, METH_VARARGS | METH_KEYWORDS, NULL},
    {"write", (PyCFunction)Store_cwrite, METH_VARARGS,
     "write(offset, data, stamp=0): one request (stamp: the pages' meta, 0 for now)"},
    {"read", (PyCFunction)Store_cread, METH_VARARGS, "read(offset, size) -> bytes: one request"},
    {"_swap_entry", (PyCFunction)Store_swap, METH_VARARGS,
     "_swap_entry(pn, entry, size, keep_old=False): store.py's _swap in C; store lock held"},
    {"_peek", (PyCFunction)Store_peek, METH_O, "_peek(pn) -> (entry, payload or None)"},
    {"_rewritten", (PyCFunction)Store_rewritten, METH_O, "_rewritten(pn); store lock held"},
    {"_was_rewritten", (PyCFunction)Store_was_rewritten, METH_O, "store lock held"},
    {"_fill_word", (PyCFunction)Store_fill_word, METH_O, "_fill_word(pn) -> word; store lock held"},
    {"_fill_set", (PyCFunction)Store_fill_set, METH_VARARGS, "_fill_set(pn, word); store lock held"},
    {"_set_slot", (PyCFunction)Store_set_slot, METH_VARARGS,
     "_set_slot(slot, level, dictionary); takes the store lock"},
    {"_drop_slot", (PyCFunction)Store_drop_slot, METH_O, "_drop_slot(slot); store lock held"},
    {"_detach_backing", (PyCFunction)Store_detach_backing, METH_NOARGS, NULL},
    {"_set_clock", (PyCFunction)Store_set_clock, METH_VARARGS, "_set_clock(t0, fixed_now)"},
    {"_writeback_batch", (PyCFunction)Store_writeback_batch, METH_O,
     "_writeback_batch(indices) -> (done, at)"},
    {"_recompress_batch", (PyCFunction)Store_recompress_batch, METH_VARARGS,
     "_recompress_batch(indices, slot, min_gain) -> (done, pages left to Python)"},
    {NULL},
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zswapfs.engine._native.Store",
    .tp_basicsize = sizeof(StoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The page index and request loop in C (see store.py for the design).",
    .tp_new = Store_new,
    .tp_dealloc = (destructor)Store_dealloc,
    .tp_traverse = (traverseproc)Store_traverse,
    .tp_clear = (inquiry)Store_clear,
    .tp_methods = Store_methods,
    .tp_members = Store_members,
    .tp_getset = Store_getset,
};

/* ------------------------------------------------------------------------------------------ */

static PyObject *set_errors(PyObject *mod, PyObject *args)
{
    PyObject *pool_full, *storage_failure_cls, *store_error;
    if (!PyArg_ParseTuple(args, "OOO", &pool_full, &storage_failure_cls, &store_error))
        return NULL;
    Py_XSETREF(PoolFullError, Py_NewRef(pool_full));
    Py_XSETREF(StorageFailureError, Py_NewRef(storage_failure_cls));
    Py_XSETREF(StoreErrorBase, Py_NewRef(store_error));
    Py_RETURN_NONE;
}

/* _set_workers(n, min_pages, lead=True): n page workers (0: every page on the requesting
 * thread) for write requests of at least min_pages whole pages; more threads start on the next
 * such request, and surplus ones stay idle. lead=False leaves a posted batch's pages to the
 * workers alone (for the tests: which thread compresses a page is otherwise up to timing). */
static PyObject *set_workers(PyObject *mod, PyObject *args)
{
    int n, min_pages, lead = 1;
    if (!PyArg_ParseTuple(args, "ii|p", &n, &min_pages, &lead))
        return NULL;
    if (n < 0 || n > 64 || min_pages < 2) {
        PyErr_SetString(PyExc_ValueError, "workers: 0..64, min_pages: at least 2");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&workers_mu);
    workers_wanted = n;
    batch_min_pages = min_pages;
    batch_lead = lead;
    pthread_mutex_unlock(&workers_mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* _workers() -> dict: the page workers' settings and what they did */
static PyObject *workers_stats(PyObject *mod, PyObject *unused)
{
    long long wanted, running, min_pages, parallel, helped;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&workers_mu);
    wanted = workers_resolved();
    running = workers_running;
    min_pages = batch_min_pages;
    parallel = batches_parallel;
    helped = batch_pages_helped;
    pthread_mutex_unlock(&workers_mu);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("{sLsLsLsLsL}", "workers", wanted, "running", running, "min_pages",
                         min_pages, "batches", parallel, "pages_by_workers", helped);
}

/* _dict_compress(dictionary, level, page) -> bytes: a page as the compiled recompression
 * writes it (for tests: a Python codec that matches it byte for byte) */
static PyObject *dict_compress(PyObject *mod, PyObject *args)
{
    Py_buffer dict, page;
    int level;
    if (!PyArg_ParseTuple(args, "y*iy*", &dict, &level, &page))
        return NULL;
    PyObject *res = NULL;
    if (page.len != PAGE_SIZE) {
        PyErr_SetString(PyExc_ValueError, "a page is 4096 bytes");
    } else {
        uint8_t out[COMPRESS_BOUND];
        int n = -1;
        ZSTD_CDict *cd = ZSTD_createCDict(dict.buf, (size_t)dict.len, level);
        if (cd)
            n = dict_compress_page(cd, page.buf, out);
        ZSTD_freeCDict(cd);
        if (n < 0)
            PyErr_SetString(PyExc_ValueError, "zstd with this dictionary failed");
        else
            res = PyBytes_FromStringAndSize((const char *)out, n);
    }
    PyBuffer_Release(&dict);
    PyBuffer_Release(&page);
    return res;
}

static PyMethodDef module_methods[] = {
    {"_dict_compress", dict_compress, METH_VARARGS, "_dict_compress(dictionary, level, page)"},
    {"_set_workers", set_workers, METH_VARARGS, "_set_workers(n, min_pages)"},
    {"_workers", workers_stats, METH_NOARGS, "_workers() -> dict"},
    {"_set_errors", set_errors, METH_VARARGS, "_set_errors(PoolFull, StorageFailure, StoreError)"},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_native",
    "The compiled page engine: the pools, the page index, the request loop and the background\n"
    "batches (see native.py).",
    -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (pthread_key_create(&zstd_key, zstd_local_free) != 0 ||
        pthread_key_create(&scratch_key, scratch_free) != 0)
        return PyErr_NoMemory();
    PoolFullError = Py_NewRef(PyExc_MemoryError);
    StorageFailureError = Py_NewRef(PyExc_OSError);
    StoreErrorBase = Py_NewRef(PyExc_OSError);
    if (PyType_Ready(&LockType) < 0 || PyType_Ready(&PoolType) < 0 ||
        PyType_Ready(&StoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0 ||
        PyModule_AddObjectRef(m, "Pool", (PyObject *)&PoolType) < 0 ||
        PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0 ||
        PyModule_AddIntConstant(m, "LZ4_VERSION", LZ4_versionNumber()) < 0 ||
        PyModule_AddIntConstant(m, "ZSTD_VERSION", (long)ZSTD_versionNumber()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
