/* Pool: the handle table and what both strategies share, the persistent region, the rebuild
 * after a takeover, and the Python type (see pool.h). */
#include "pool.h"

#include <sys/stat.h>

int grow(void **p, size_t *cap, size_t need, size_t item)
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

/* Grow *arr from *old* to *n* items of *item* bytes, the new ones zeroed. */
int resize_zeroed(void **arr, size_t old, size_t n, size_t item)
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
size_t page_table_len(const PoolObject *p, size_t len)
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

/* handle table ---------------------------------------------------------------------------- */

/* a new handle for *loc*, or 0 when every handle is in use (the region's max_handles); the
 * handle is named by nothing until its owner commits it (I1) */
uint64_t handle_new(PoolObject *p, uint64_t loc)
{
    uint64_t head = p->free_head;
    if (head) {
        p->free_head = p->table[head] & ~FREE_TAG;
        p->table[head] = loc;
        p->live++;
        return head;
    }
    if (p->tlen >= p->hdr->max_handles)
        return 0;
    p->table[p->tlen] = loc;
    p->live++;
    __atomic_store_n(&p->hdr->tlen, p->tlen + 1, __ATOMIC_RELEASE);
    return p->tlen++;
}

/* the persistent region ------------------------------------------------------------------- */

/* handles a region holds room for: every object the arena could hold (zsmalloc's smallest
 * slot is MIN_SIZE bytes, a buddy page holds three), the three reserved ids beside */
static uint64_t max_handles_for(int kind, uint64_t max_pages)
{
    uint64_t n = max_pages * (kind == POOL_ZSMALLOC ? PAGE_SIZE / MIN_SIZE : 3) + 3;
    return n < MAX_HANDLES ? n : MAX_HANDLES;
}

static uint64_t align_up(uint64_t v) { return (v + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1); }

/* the region's layout for a pool of this geometry, in a header (offsets and sizes) */
static void region_layout(PoolHeader *h, int kind, uint64_t max_pages, int max_chain)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, POOL_MAGIC, 8);
    h->format = POOL_FORMAT;
    h->kind = (uint32_t)kind;
    h->max_chain = (uint32_t)max_chain;
    h->max_pages = max_pages;
    h->max_handles = max_handles_for(kind, max_pages);
    h->max_zspages = kind == POOL_ZSMALLOC ? max_pages : 0;
    uint64_t off = POOL_HEADER_BYTES;
    h->off_table = off;
    off = align_up(off + h->max_handles * 8);
    h->off_zs_first = off;
    off = align_up(off + h->max_zspages * 4);
    h->off_zs_class = off;
    off = align_up(off + h->max_zspages * 2);
    h->off_page_next = off;
    off = align_up(off + (kind == POOL_ZSMALLOC ? max_pages * 4 : 0));
    h->off_bd_mid = off;
    off = align_up(off + (kind == POOL_ZSMALLOC ? 0 : max_pages));
    h->bytes = off;
}

/* map the region of *fd* (made here when fd is -1) and point the pool's arrays into it; with
 * *adopt*, the header found there must be one of this build's format for this geometry (else
 * ValueError naming what differs). -1 with an exception set; the pool owns *fd* either way. */
static const char *const KIND_NAMES[] = {"zsmalloc", "zbud", "z3fold"};

/* a header found at a takeover, checked against the one this pool would write: 0, or -1 with
 * ValueError naming the first thing that differs */
static int header_check(const PoolHeader *h, const PoolHeader *want)
{
    if (memcmp(h->magic, POOL_MAGIC, 8) != 0)
        PyErr_SetString(PyExc_ValueError, "the pool's state descriptor holds no zswapfs pool");
    else if (h->format != POOL_FORMAT)
        PyErr_Format(PyExc_ValueError, "the pool's state is of format %u, this build reads "
                     "format %u", h->format, POOL_FORMAT);
    else if (h->kind != want->kind)
        PyErr_Format(PyExc_ValueError, "the pool's state is a %s pool, not %s (another pool "
                     "geometry)", h->kind < 3 ? KIND_NAMES[h->kind] : "?",
                     KIND_NAMES[want->kind]);
    else if (h->max_pages != want->max_pages || h->max_chain != want->max_chain ||
             h->bytes != want->bytes || h->off_table != want->off_table)
        PyErr_Format(PyExc_ValueError, "the pool's state was made for another pool geometry "
                     "(%llu pages, chain %u; this pool: %llu, %u)",
                     (unsigned long long)h->max_pages, h->max_chain,
                     (unsigned long long)want->max_pages, want->max_chain);
    else
        return 0;
    return -1;
}

/* map the region of *fd* (made here when fd is -1) and point the pool's arrays into it; with
 * *adopt*, the header found there must be one of this build's format for this geometry (else
 * ValueError naming what differs; nothing written). -1 with an exception set; the pool owns
 * *fd* either way. */
static int region_open(PoolObject *p, int fd, int adopt, uint64_t max_pages)
{
    PoolHeader want;
    region_layout(&want, p->kind, max_pages, p->max_chain);
    if (fd < 0) {
        fd = memfd_create("zswapfs-pool", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)want.bytes) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            if (fd >= 0)
                close(fd);
            return -1;
        }
    }
    p->state_fd = fd;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        PyErr_SetString(PyExc_ValueError, "the pool's state descriptor is not a memory file");
        return -1;
    }
    if (adopt) {
        PoolHeader found;
        ssize_t n = pread(fd, &found, sizeof(found), 0);
        if (n != (ssize_t)sizeof(found)) {
            PyErr_Format(PyExc_ValueError, "the pool's state descriptor holds %lld bytes, too "
                         "few for a pool", (long long)st.st_size);
            return -1;
        }
        if (header_check(&found, &want) != 0)
            return -1;
    }
    if ((uint64_t)st.st_size != want.bytes) {
        PyErr_Format(PyExc_ValueError, "the pool's state descriptor is %lld bytes, not the %llu "
                     "of this pool", (long long)st.st_size, (unsigned long long)want.bytes);
        return -1;
    }
    void *base = mmap(NULL, want.bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    PoolHeader *h = base;
    if (!adopt)
        memcpy(h, &want, sizeof(want));
    p->hdr = h;
    p->table = (uint64_t *)((char *)base + h->off_table);
    p->zs_first = (uint32_t *)((char *)base + h->off_zs_first);
    p->zs_class = (uint16_t *)((char *)base + h->off_zs_class);
    p->page_next = (uint32_t *)((char *)base + h->off_page_next);
    p->bd_mid = (uint8_t *)((char *)base + h->off_bd_mid);
    return 0;
}

static void region_close(PoolObject *p)
{
    if (p->hdr) {
        munmap(p->hdr, p->hdr->bytes);
        p->hdr = NULL;
        p->table = NULL;
        p->zs_first = p->page_next = NULL;
        p->zs_class = NULL;
        p->bd_mid = NULL;
    }
    if (p->state_fd >= 0) {
        close(p->state_fd);
        p->state_fd = -1;
    }
}

/* rebuild after a takeover --------------------------------------------------------------- */

int pool_rebuild(PoolObject *p, const uint8_t *live)
{
    PoolHeader *h = p->hdr;
    uint64_t tlen = __atomic_load_n(&h->tlen, __ATOMIC_ACQUIRE);
    if (tlen < 3 || tlen > h->max_handles) {
        PyErr_Format(PyExc_ValueError, "the pool's state names %llu handles", tlen);
        return -1;
    }
    p->tlen = tlen;
    p->zs_count = h->zs_count;
    if (p->zs_count > h->max_zspages) {
        PyErr_SetString(PyExc_ValueError, "the pool's state names too many zspages");
        return -1;
    }
    /* I4: a z3fold move that did not commit is undone (the object back where its location
     * word, restored, says) */
    if (h->move.valid) {
        MoveJournal *j = &h->move;
        if (j->handle < tlen && j->pn < p->arena.max_pages && j->len <= PAGE_SIZE) {
            p->table[j->handle] = j->old_loc;
            p->bd_mid[j->pn] = (uint8_t)j->old_mid;
            int bud = (int)(j->old_loc >> 13) & 3;
            int start = bud == BUD_FIRST ? 0 : (int)j->old_mid;
            memcpy(page_addr(&p->arena, j->pn) + start * CHUNK, j->bytes, j->len);
        }
        __atomic_store_n(&j->valid, 0, __ATOMIC_RELEASE);
    }
    /* the handles nobody names are let go, and chained as free ones */
    p->free_head = 0;
    p->live = 0;
    p->bytes_stored = 0;
    for (uint64_t i = tlen; i-- > 3;) {
        int named = live ? live[i] : !(p->table[i] & FREE_TAG);
        if (named && (p->table[i] & FREE_TAG)) {
            PyErr_Format(PyExc_ValueError, "handle %llu is named but free in the pool's state",
                         (unsigned long long)i);
            return -1;
        }
        if (!named) {
            p->table[i] = FREE_TAG | p->free_head;
            p->free_head = i;
        } else {
            p->live++;
            p->bytes_stored += (long long)(p->table[i] & LEN_MASK);
        }
    }
    uint8_t *used = calloc(p->arena.max_pages, 1);
    if (!used) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = p->kind == POOL_ZSMALLOC ? zs_rebuild(p, used) : bd_rebuild(p, used);
    if (rc == 0) {
        arena_rebuild(&p->arena, used);
        if (p->arena.pages_max < h->pages_max)
            p->arena.pages_max = (uint32_t)h->pages_max;
        p->arena.segments_released = h->segments_released;
        p->needs_rebuild = 0;
    }
    free(used);
    if (rc != 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "the pool's state contradicts itself");
    return rc;
}

/* migrate_page's isolate and copy, for every pool: the lowest free page below live page *pn*
 * (the page tables grown to cover it) holding a copy of it, or -1 when there is none (putback:
 * nothing touched) */
int64_t migrate_copy(PoolObject *p, uint32_t pn)
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

/* Python face of the pool ----------------------------------------------------------------- */

int pool_check(PoolObject *p)
{
    if (!p->ready || p->closed || p->needs_rebuild) {
        PyErr_SetString(PyExc_RuntimeError,
                        p->closed          ? "the pool is closed"
                        : p->needs_rebuild ? "the pool is taken over but not rebuilt"
                                           : "pool not set up");
        return -1;
    }
    return 0;
}

static PyObject *Pool_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    return new_with_lock(type, offsetof(PoolObject, lock));
}

static void Pool_dealloc(PoolObject *p)
{
    PyObject_GC_UnTrack(p);
    arena_free_tables(&p->arena);
    region_close(p);
    free(p->classes);
    free(p->heads);
    free(p->zs_inuse);
    free(p->zs_bump);
    free(p->zs_free);
    free(p->zs_prev);
    free(p->zs_next);
    free(p->zs_group);
    free(p->zs_unused);
    free(p->page_owner);
    for (int b = 0; b < 3; b++) {
        free(p->bd_chunks[b]);
        free(p->bd_handle[b]);
    }
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

/* _setup(max_pages, max_chain, kind, state_fd=-1, arena_fd=-1): a new pool over new memfds;
 * with both descriptors given, the pool they hold is taken over (it is rebuilt when the store
 * over it is: pool_rebuild, or _rebuild() for a pool alone). The pool owns the descriptors. */
static PyObject *Pool_setup(PoolObject *p, PyObject *args)
{
    static const char *kinds[] = {"zsmalloc", "zbud", "z3fold"};
    unsigned long long max_pages;
    int max_chain, state_fd = -1, arena_fd = -1;
    const char *name;
    if (!PyArg_ParseTuple(args, "Kis|ii", &max_pages, &max_chain, &name, &state_fd, &arena_fd))
        return NULL;
    p->state_fd = -1;
    int adopt = state_fd >= 0 && arena_fd >= 0;
    if ((state_fd >= 0) != (arena_fd >= 0)) {
        PyErr_SetString(PyExc_ValueError, "a pool is taken over from both its descriptors");
        if (state_fd >= 0)
            close(state_fd);
        if (arena_fd >= 0)
            close(arena_fd);
        return NULL;
    }
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
    if (region_open(p, state_fd, adopt, max_pages) != 0) {
        if (arena_fd >= 0)
            close(arena_fd);
        return NULL;
    }
    if (arena_init(&p->arena, (uint32_t)max_pages, arena_fd) != 0) {
        if (adopt && errno == EINVAL)
            return PyErr_Format(PyExc_ValueError,
                                "the pool's arena descriptor is not a memfd of %llu pages",
                                max_pages);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct stat ast;
    if (fstat(p->arena.fd, &ast) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (!adopt) {
        p->hdr->arena_dev = (uint64_t)ast.st_dev;
        p->hdr->arena_ino = (uint64_t)ast.st_ino;
    } else if (p->hdr->arena_dev != (uint64_t)ast.st_dev ||
               p->hdr->arena_ino != (uint64_t)ast.st_ino) {
        return PyErr_Format(PyExc_ValueError, "the arena descriptor is not this pool's");
    }
    p->arena.keep_pages_max = &p->hdr->pages_max;
    p->arena.keep_segments_released = &p->hdr->segments_released;
    if (kind == POOL_ZSMALLOC && build_classes(p) != 0)
        return PyErr_NoMemory();
    if (adopt) {
        p->needs_rebuild = 1;
    } else {
        for (int i = 0; i < 3; i++)
            p->table[i] = FREE_TAG;
        p->tlen = 3;
        p->hdr->tlen = 3;
    }
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

PyObject *not_live(unsigned long long h)
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

/* close(): the arena and the region let go (their memory with them, unless another process
 * holds their memfds: a supervisor's, for the next process to take over) */
static PyObject *Pool_close(PoolObject *p, PyObject *unused)
{
    if (lock_enter(p->lock))
        return NULL;
    arena_close(&p->arena);
    region_close(p);
    p->closed = 1;
    lock_give(p->lock);
    Py_RETURN_NONE;
}

/* _rebuild(): a pool taken over alone (no store over it) rebuilt from every handle its table
 * holds (tests; the daemon's store rebuilds its pool from the handles it names) */
static PyObject *Pool_rebuild(PoolObject *p, PyObject *unused)
{
    if (!p->ready || !p->needs_rebuild)
        return PyErr_Format(PyExc_RuntimeError, "only a pool taken over is rebuilt");
    if (lock_enter(p->lock))
        return NULL;
    int rc = pool_rebuild(p, NULL);
    lock_give(p->lock);
    if (rc != 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _descriptors() -> (state_fd, arena_fd): the memfds a supervisor keeps (docs/restart.md) */
static PyObject *Pool_descriptors(PoolObject *p, PyObject *unused)
{
    if (pool_check(p))
        return NULL;
    return Py_BuildValue("(ii)", p->state_fd, p->arena.fd);
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
POOL_GETTER(pages_compacted, p->hdr->pages_compacted)
POOL_GETTER(objects_moved, p->hdr->objects_moved)
POOL_GETTER(migrated_pages, p->hdr->migrated_pages)
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
    if (lock_enter(p->lock))
        return NULL;
    long n = (long)arena_segments_live(&p->arena);
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
    {"_setup", (PyCFunction)Pool_setup, METH_VARARGS,
     "_setup(max_pages, max_chain, kind, state_fd=-1, arena_fd=-1)"},
    {"_rebuild", (PyCFunction)Pool_rebuild, METH_NOARGS, NULL},
    {"_descriptors", (PyCFunction)Pool_descriptors, METH_NOARGS,
     "_descriptors() -> (state_fd, arena_fd)"},
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

PyTypeObject PoolType = {
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
