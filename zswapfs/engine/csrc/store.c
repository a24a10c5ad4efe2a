/* Store: see store.h. */
#include "store.h"

#include <sys/stat.h>

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

/* same-filled words: the region's sparse array, one word a page, meaningful while the page's
 * entry is SAME (written before the commit that makes it so: S1) ------------------------ */

static inline uint64_t fill_get(const StoreObject *s, uint64_t pn)
{
    ASSERT_HELD(s->lock);
    return s->fillw[pn];
}

/* a word of 0 is written only over a non-zero one: a page of the array never touched stays a
 * hole */
static inline void fill_put(StoreObject *s, uint64_t pn, uint64_t word)
{
    ASSERT_HELD(s->lock);
    if (word || s->fillw[pn])
        __atomic_store_n(&s->fillw[pn], word, __ATOMIC_RELEASE);
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

/* store.py's _swap (store lock held; takes the pool lock unless pool_locked): page pn's word
 * becomes (entry, meta), committed in one store (S1; *word* is a SAME page's fill word, put
 * first), then what the old word named is let go (S2) and the counters follow. keep_old: the
 * old object is shared (dedup), so another page still uses it. -1 when the old entry's handle
 * is not live in the pool (nothing changed then). */
static int store_swap(StoreObject *s, uint32_t pn, uint32_t entry, uint32_t meta, uint64_t word,
                      int size, int pool_locked, int keep_old)
{
    ASSERT_HELD(s->lock);
    if (s->inflight_n) {
        Inflight *f = inflight_find(s, pn);
        if (f)
            f->rewritten = 1;
    }
    uint32_t old = IDX(s, pn);
    int free_old = old >= FIRST_HANDLE && !keep_old;
    if (free_old && !pool_locked)
        lock_take(s->pool->lock);
    uint64_t loc;
    if (free_old && handle_get(s->pool, old, &loc) != 0) {
        if (!pool_locked)
            lock_give(s->pool->lock);
        return -1;
    }
    if (entry == SAME) {
        fill_put(s, pn, word);
        if (old == SAME || word)
            crash_point("store.fill");
    }
    store_commit(s, pn, entry, meta);
    if (free_old || old == SAME)
        crash_point("store.commit"); /* something to let go */
    if (free_old) {
        int old_size = pool_free_locked(s->pool, old);
        if (!pool_locked)
            lock_give(s->pool->lock);
        if (old_size > 0) {
            s->c->compr_data_size -= old_size;
            if (old_size == PAGE_SIZE)
                s->c->huge_pages--;
        }
    }
    if (old == SAME) {
        s->c->same_pages--;
        s->c->stored_pages--;
        if (entry != SAME)
            fill_put(s, pn, 0);
    } else if (old == BACKED) {
        s->c->bd_count--;
    } else if (old >= FIRST_HANDLE) {
        s->c->stored_pages--;
    }
    if (entry == BACKED) {
        s->c->bd_count++;
        return 0;
    }
    if (entry == EMPTY) /* discarded: nothing held */
        return 0;
    s->c->stored_pages++;
    if (entry == SAME) {
        s->c->same_pages++;
    } else {
        s->c->compr_data_size += size;
        if (size == PAGE_SIZE)
            s->c->huge_pages++;
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
    return IDX(s, pn) >= FIRST_HANDLE && (META(s, pn) & (SLOT_MASK | SHARED));
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
        crash_point("store.to_file");
        /* the file holds it: clean */
        if (!python_owned(s, pn) && store_swap(s, pn, BACKED, stamp & AGE_MASK, 0, 0, 0, 0) == 0) {
            s->c->pool_limit_hit++;
            s->c->bd_writes++;
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
        else if (store_swap(s, pn, SAME, stamp, word, 0, 0, 0) != 0)
            rc = PAGE_NOT_LIVE;
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
    } else {
        crash_point("store.placed");
        if (store_swap(s, pn, (uint32_t)h, stamp, 0, len, 1, 0) != 0) {
            pool_free_locked(s->pool, h);
            rc = PAGE_NOT_LIVE;
        }
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
    META(s, pn) = (meta & ~AGE_MASK) | MARK | now;
    lock_take(s->pool->lock);
    int len = pool_read_locked(s->pool, entry, buf);
    lock_give(s->pool->lock);
    if (len < 0)
        s->c->failed_reads++;
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
        s->c->failed_reads++;
        lock_give(s->lock);
    }
    return rc;
}

/* read_page's fast path, GIL released: PAGE_PYTHON for a page the Python path must read: a
 * failed read of the backing file, a recompressed page read a second time or whose slot has no
 * dictionary in C (store.py's read_page decodes it with its slot's codec). */
static int load_page(StoreObject *s, uint32_t pn, uint8_t *out, uint32_t now)
{
    uint8_t buf[PAGE_SIZE];
    lock_take(s->lock);
    uint32_t entry = IDX(s, pn);
    if (entry == SAME) {
        META(s, pn) = (META(s, pn) & ~AGE_MASK) | now;
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
        s->c->bd_reads++;
        lock_give(s->lock);
        return PAGE_DONE;
    }
    uint32_t meta = META(s, pn);
    if (meta & SLOT_MASK)
        return load_recompressed(s, pn, entry, meta, out, now);
    META(s, pn) = (meta & ~AGE_MASK) | now;
    lock_take(s->pool->lock);
    int len = pool_read_locked(s->pool, entry, buf);
    lock_give(s->pool->lock);
    if (len < 0) {
        s->c->failed_reads++;
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
        s->c->failed_reads++;
        lock_give(s->lock);
        return PAGE_CORRUPT;
    }
    return PAGE_DONE;
}

/* Python face of the store ---------------------------------------------------------------- */

int store_check(StoreObject *s)
{
    if (!s->ready || s->needs_rebuild) {
        PyErr_SetString(PyExc_RuntimeError,
                        s->ready ? "the store is taken over but not adopted" : "store not set up");
        return -1;
    }
    return pool_check(s->pool);
}

static PyObject *Store_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    StoreObject *s = (StoreObject *)new_with_lock(type, offsetof(StoreObject, lock));
    if (!s)
        return NULL;
    s->c = &s->local;
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
    if (s->region_buf.obj)
        Py_VISIT(s->region_buf.obj);
    if (s->slot_pages_buf.obj)
        Py_VISIT(s->slot_pages_buf.obj);
    return 0;
}

static int Store_clear(StoreObject *s)
{
    if (s->region_buf.obj) {
        s->local = *s->c; /* the region goes: the counters stay readable */
        s->c = &s->local;
        PyBuffer_Release(&s->region_buf);
    }
    if (s->slot_pages_buf.obj)
        PyBuffer_Release(&s->slot_pages_buf);
    s->hdr = NULL;
    s->ent = s->fillw = NULL;
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
    free(s->inflight);
    for (int i = 0; i < SLOTS; i++) {
        slot_dict_unpin(s->dicts[i]);
        s->dicts[i] = NULL;
    }
    Py_CLEAR(s->lock);
    Py_CLEAR(s->file_lock);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static uint64_t align_page(uint64_t v) { return (v + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1); }

/* the region's layout for an image of *npages* pages, in a header's fields */
static void store_layout(StoreHeader *h, uint64_t npages)
{
    memset(h, 0, sizeof(*h));
    h->npages = npages;
    h->off_entries = STORE_HEADER_BYTES;
    h->off_fill = align_page(h->off_entries + npages * 8);
    h->off_dicts = align_page(h->off_fill + npages * 8);
    h->bytes = h->off_dicts + (uint64_t)SLOTS * DICT_MAX;
}

/* _store_layout(npages) -> (bytes, off_entries, off_fill): the region native.py maps */
PyObject *py_store_layout(PyObject *mod, PyObject *arg)
{
    unsigned long long npages = PyLong_AsUnsignedLongLong(arg);
    if (npages == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (!npages || npages > UINT32_MAX)
        return PyErr_Format(PyExc_ValueError, "an image holds 1..%u pages", UINT32_MAX);
    StoreHeader h;
    store_layout(&h, npages);
    return Py_BuildValue("(KKK)", (unsigned long long)h.bytes,
                         (unsigned long long)h.off_entries, (unsigned long long)h.off_fill);
}

/* the device and inode of descriptor fd (0, 0 for none or one that fstat refuses) */
static void fd_identity(int fd, uint64_t *dev, uint64_t *ino)
{
    struct stat st;
    *dev = *ino = 0;
    if (fd >= 0 && fstat(fd, &st) == 0) {
        *dev = (uint64_t)st.st_dev;
        *ino = (uint64_t)st.st_ino;
    }
}

static const char *const CODEC_NAMES[] = {"none", "lz4", "zstd"};

/* a region found at a takeover, checked against what this store is set up with: 0, or -1 with
 * ValueError naming the first thing that differs (nothing written) */
static int region_check(StoreObject *s, const StoreHeader *want)
{
    const StoreHeader *h = s->hdr;
    uint64_t pool_dev, pool_ino, bdev, bino;
    fd_identity(s->pool->state_fd, &pool_dev, &pool_ino);
    fd_identity(s->backing_fd, &bdev, &bino);
    if (memcmp(h->magic, STORE_MAGIC, 8) != 0)
        PyErr_SetString(PyExc_ValueError, "the store's state descriptor holds no zswapfs store");
    else if (h->format != STORE_FORMAT)
        PyErr_Format(PyExc_ValueError, "the store's state is of format %u, this build reads "
                     "format %u", h->format, STORE_FORMAT);
    else if (h->npages != want->npages || h->bytes != want->bytes ||
             h->off_entries != want->off_entries || h->off_fill != want->off_fill ||
             h->off_dicts != want->off_dicts)
        PyErr_Format(PyExc_ValueError, "the store's state is an image of %llu pages, not %llu",
                     (unsigned long long)h->npages, (unsigned long long)want->npages);
    else if (h->codec != (uint32_t)s->codec || h->level != s->level)
        PyErr_Format(PyExc_ValueError, "the store's state was written with codec %s level %d",
                     h->codec < 3 ? CODEC_NAMES[h->codec] : "?", h->level);
    else if (h->persistent != (uint32_t)s->persistent)
        PyErr_Format(PyExc_ValueError, "the store's state is of an image in %s mode",
                     h->persistent ? "image" : "swap");
    else if (h->pool_dev != pool_dev || h->pool_ino != pool_ino)
        PyErr_SetString(PyExc_ValueError, "the pool's state descriptor is not this store's");
    else if (h->backing_dev != bdev || h->backing_ino != bino)
        PyErr_SetString(PyExc_ValueError,
                        h->backing_ino ? "the backing file is not this store's"
                                       : "the store's state has no backing file");
    else
        return 0;
    return -1;
}

/* _setup(region, npages, pool, codec, level, mem_limit, low_water, huge_to_backing,
 * persistent, backing_fd, t0, slot_pages, adopt=False): the store over *region* (a writable
 * buffer of _store_layout's bytes: native.py's mmap of the memfd). A new region is written
 * here (its magic last); with *adopt*, the region found there is checked (ValueError when it
 * is not this store's, nothing written) and _adopt() must run before anything else. */
static PyObject *Store_setup(StoreObject *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"region", "npages", "pool", "codec", "level", "mem_limit",
                             "low_water", "huge_to_backing", "persistent", "backing_fd",
                             "t0", "slot_pages", "adopt", NULL};
    PyObject *region, *pool, *slot_pages;
    unsigned long long npages;
    const char *codec;
    int level, huge, persistent, backing_fd, adopt = 0;
    long long mem_limit, low_water;
    double t0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OKO!siLLppidO|p", kwlist, &region, &npages,
                                     &PoolType, &pool, &codec, &level, &mem_limit, &low_water,
                                     &huge, &persistent, &backing_fd, &t0, &slot_pages, &adopt))
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
    if (!npages || npages > UINT32_MAX)
        return PyErr_Format(PyExc_ValueError, "an image holds 1..%u pages", UINT32_MAX);
    if (((PoolObject *)pool)->state_fd < 0)
        return PyErr_Format(PyExc_ValueError, "the pool is not set up");
    StoreHeader want;
    store_layout(&want, npages);
    if (PyObject_GetBuffer(region, &s->region_buf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0)
        return NULL;
    if ((uint64_t)s->region_buf.len != want.bytes) {
        PyBuffer_Release(&s->region_buf);
        return PyErr_Format(PyExc_ValueError, "the store's state is %zd bytes, not the %llu of "
                            "an image of %llu pages", s->region_buf.len,
                            (unsigned long long)want.bytes, npages);
    }
    if (PyObject_GetBuffer(slot_pages, &s->slot_pages_buf,
                           PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0 ||
        s->slot_pages_buf.itemsize != 8 || s->slot_pages_buf.len != SLOTS * 8 ||
        !s->slot_pages_buf.format || !strchr("lq", s->slot_pages_buf.format[
            s->slot_pages_buf.format[0] == '<' || s->slot_pages_buf.format[0] == '=' ? 1 : 0])) {
        if (s->slot_pages_buf.obj)
            PyBuffer_Release(&s->slot_pages_buf);
        PyBuffer_Release(&s->region_buf);
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "slot_pages: expected %d int64 items", SLOTS);
        return NULL;
    }
    s->npages = npages;
    s->hdr = s->region_buf.buf;
    s->pool = (PoolObject *)Py_NewRef(pool);
    s->level = level;
    s->persistent = persistent;
    s->has_backing = backing_fd >= 0;
    s->backing_fd = backing_fd;
    if (adopt && region_check(s, &want) != 0) {
        PyBuffer_Release(&s->slot_pages_buf);
        PyBuffer_Release(&s->region_buf);
        s->hdr = NULL;
        Py_CLEAR(s->pool);
        s->backing_fd = -1;
        return NULL;
    }
    StoreHeader *h = s->hdr;
    if (!adopt) {
        memcpy((char *)h + 8, (char *)&want + 8, sizeof(want) - 8);
        h->format = STORE_FORMAT;
        h->codec = (uint32_t)s->codec;
        h->level = level;
        h->persistent = (uint32_t)persistent;
        fd_identity(s->pool->state_fd, &h->pool_dev, &h->pool_ino);
        fd_identity(backing_fd, &h->backing_dev, &h->backing_ino);
        h->t0 = t0;
        h->counters = s->local;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        memcpy(h->magic, STORE_MAGIC, 8);
    } else {
        s->needs_rebuild = 1;
        t0 = h->t0;
    }
    s->c = &h->counters;
    s->ent = (uint64_t *)((char *)h + h->off_entries);
    s->fillw = (uint64_t *)((char *)h + h->off_fill);
    s->slot_pages = s->slot_pages_buf.buf;
    s->mem_limit = mem_limit;
    s->low_water = low_water;
    s->huge_to_backing = huge;
    s->t0 = t0;
    s->ready = 1;
    Py_RETURN_NONE;
}

/* _adopt(region_fd) -> bytes: the state of a store taken over made whole: the derived
 * counters recomputed from the pages' words, the pool rebuilt from the handles they name
 * (everything else a dead process left in the pool let go), then every page of the three
 * memfds (region, pool region, arena) faulted into this process, so that it holds them all
 * locked before the keeper of the one before lets them go (keeper.c). ValueError when the
 * region contradicts itself; OSError when the pages could not all be populated (the store is
 * whole then all the same); the bytes populated. */
static PyObject *Store_adopt(StoreObject *s, PyObject *arg)
{
    int region_fd = PyLong_AsLong(arg);
    if (region_fd == -1 && PyErr_Occurred())
        return NULL;
    if (!s->ready || !s->needs_rebuild)
        return PyErr_Format(PyExc_RuntimeError, "only a store taken over is adopted");
    PoolObject *p = s->pool;
    uint64_t tlen = __atomic_load_n(&p->hdr->tlen, __ATOMIC_ACQUIRE);
    if (tlen < 3 || tlen > p->hdr->max_handles)
        return PyErr_Format(PyExc_ValueError, "the pool's state names %llu handles",
                            (unsigned long long)tlen);
    uint8_t *live = calloc(tlen, 1);
    if (!live)
        return PyErr_NoMemory();
    if (lock_enter(s->lock)) {
        free(live);
        return NULL;
    }
    long long stored = 0, same = 0, backed = 0;
    int bad = 0;
    for (uint64_t pn = 0; pn < s->npages && !bad; pn++) {
        uint32_t e = IDX(s, pn), m = META(s, pn);
        uint32_t slot = (m & SLOT_MASK) >> SLOT_SHIFT;
        if (e == SAME) {
            stored++;
            same++;
        } else if (e == BACKED) {
            backed++;
            if (!s->has_backing) {
                PyErr_Format(PyExc_ValueError, "page %llu lives in a backing file, and the "
                             "store has none", (unsigned long long)pn);
                bad = 1;
            }
        } else if (e >= FIRST_HANDLE) {
            stored++;
            if (e >= tlen) {
                PyErr_Format(PyExc_ValueError, "page %llu names handle %u, past the pool's "
                             "table", (unsigned long long)pn, e);
                bad = 1;
            } else if (slot && !s->hdr->slots[slot].name[0]) {
                PyErr_Format(PyExc_ValueError, "page %llu names codec slot %u, which holds "
                             "no codec", (unsigned long long)pn, slot);
                bad = 1;
            }
            live[e < tlen ? e : 0] = 1;
        }
    }
    if (!bad) {
        lock_wait(p->lock);
        bad = pool_rebuild(p, live) != 0;
        long long bytes = 0, huge = 0;
        for (uint64_t h = 3; h < tlen && !bad; h++) {
            if (!live[h])
                continue;
            long long len = (long long)(p->table[h] & LEN_MASK);
            bytes += len;
            huge += len == PAGE_SIZE;
        }
        lock_give(p->lock);
        if (!bad) {
            s->c->stored_pages = stored;
            s->c->same_pages = same;
            s->c->bd_count = backed;
            s->c->compr_data_size = bytes;
            s->c->huge_pages = huge;
            s->c->takeovers++;
            s->needs_rebuild = 0;
        }
    }
    lock_give(s->lock);
    free(live);
    if (bad)
        return NULL;
    long long done = 0, n = 0;
    Py_BEGIN_ALLOW_THREADS
    n = memfd_populate(s->region_buf.buf, (size_t)s->region_buf.len, region_fd);
    if (n >= 0) {
        done += n;
        n = memfd_populate(p->hdr, p->hdr->bytes, p->state_fd);
    }
    if (n >= 0) {
        done += n;
        n = memfd_populate(p->arena.base, (size_t)p->arena.nseg * SEG_BYTES, p->arena.fd);
    }
    Py_END_ALLOW_THREADS
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLongLong(done + n);
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
PyObject *store_wrap_failure(StoreObject *s, int writing, unsigned long long offset,
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
        s->c->failed_writes++;
    else
        s->c->failed_reads++;
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

/* The request cores ------------------------------------------------------------------------
 *
 * One write, read or discard request each, runnable on any thread with the GIL not held: a
 * Python caller's (the methods below let the GIL go around them) or a FUSE worker's, which may
 * have no Python thread state at all (frontend.c gives each one a lasting one). A page only the
 * Python path can decide is handed to it under the GIL (PyGILState_Ensure), every engine lock
 * let go first. Each returns 0, or -1 with a Python exception set in this thread's state: the
 * caller deals with it holding the GIL (the methods raise it, the frontend maps it to an
 * errno). */

/* call *method* of the store under the GIL with Py_BuildValue's *fmt* arguments; a page it
 * returns (read callbacks) is copied to *page* when that is not NULL. -1: an exception is set */
static int call_back(StoreObject *s, const char *method, uint8_t *page, const char *fmt, ...)
{
    PyGILState_STATE g = PyGILState_Ensure();
    va_list va;
    va_start(va, fmt);
    PyObject *args = fmt ? Py_VaBuildValue(fmt, va) : PyTuple_New(0);
    va_end(va);
    int rc = -1;
    if (args && !PyTuple_Check(args)) /* a single value: make it a 1-tuple */
        Py_SETREF(args, PyTuple_Pack(1, args));
    PyObject *fn = args ? PyObject_GetAttrString((PyObject *)s, method) : NULL;
    PyObject *res = fn ? PyObject_Call(fn, args, NULL) : NULL;
    Py_XDECREF(fn);
    Py_XDECREF(args);
    if (res && page)
        rc = take_page(res, page); /* takes res */
    else if (res) {
        Py_DECREF(res);
        rc = 0;
    }
    PyGILState_Release(g);
    return rc;
}

/* a failed page of a request: its exception, raised under the GIL; -1 */
static int fail_page(int rc, uint32_t pn)
{
    PyGILState_STATE g = PyGILState_Ensure();
    page_error(rc, pn);
    PyGILState_Release(g);
    return -1;
}

/* one page read back whole into *out* (a PAGE_PYTHON page through _read_slow) */
static int read_one(StoreObject *s, uint32_t pn, uint8_t *out, uint32_t now)
{
    int rc = load_page(s, pn, out, now);
    if (rc == PAGE_PYTHON)
        return call_back(s, "_read_slow", out, "I", pn);
    return rc == PAGE_DONE ? 0 : fail_page(rc, pn);
}

int store_write_req(StoreObject *s, uint64_t offset, const uint8_t *src, size_t left,
                    uint32_t stamp)
{
    __atomic_add_fetch(&s->c->requests, 1, __ATOMIC_RELAXED);
    uint32_t pn = (uint32_t)(offset / PAGE_SIZE);
    size_t head = offset % PAGE_SIZE;
    uint8_t tmp[PAGE_SIZE];
    int failed = 0;
    int pressure = 0; /* a page went to the file for the memory limit: on_pressure told */
    uint32_t now = store_now(s);
    if (!stamp)
        stamp = now | (s->persistent ? DIRTY : 0);
    /* an aligned request of many whole pages: classify and compress them on every core first,
     * BATCH_MAX pages at a time (each thread's scratch holds one such batch) */
    uint32_t first = pn, nprep = 0;
    Scratch *sc = NULL;
    if (!head && left / PAGE_SIZE >= (size_t)__atomic_load_n(&batch_min_pages, __ATOMIC_RELAXED) &&
        __atomic_load_n(&workers_wanted, __ATOMIC_RELAXED) && (sc = scratch_get()) != NULL)
        sc->busy = 1;
    while (left && !failed) {
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
            if (read_one(s, pn, tmp, now) != 0) {
                failed = 1;
                break;
            }
            memcpy(tmp + head, src, n);
            page = tmp;
        }
        if (pn - first < nprep) {
            uint32_t i = pn - first;
            rc = store_prepared(s, pn, page, stamp, sc->lens[i],
                                sc->out + (size_t)i * COMPRESS_BOUND, sc->words[i]);
        } else {
            rc = store_page(s, pn, page, stamp);
        }
        if (rc == PAGE_TO_FILE) {
            if (!pressure) { /* the first such page: wake the maintenance thread (_encode's) */
                pressure = 1;
                failed = call_back(s, "on_pressure", NULL, NULL) != 0;
            }
        } else if (rc == PAGE_PYTHON) {
            failed = call_back(s, "_write_slow", NULL, "Iy#k", pn, (const char *)page,
                               (Py_ssize_t)PAGE_SIZE, (unsigned long)stamp) != 0;
        } else if (rc != PAGE_DONE) {
            failed = fail_page(rc, pn) != 0;
        }
        src += n;
        left -= n;
        head = 0;
        pn++;
    }
    if (sc)
        sc->busy = 0;
    return failed ? -1 : 0;
}

int store_read_req(StoreObject *s, uint64_t offset, size_t left, uint8_t *dst)
{
    __atomic_add_fetch(&s->c->requests, 1, __ATOMIC_RELAXED);
    uint32_t pn = (uint32_t)(offset / PAGE_SIZE);
    size_t head = offset % PAGE_SIZE;
    uint8_t tmp[PAGE_SIZE];
    uint32_t now = store_now(s);
    while (left) {
        size_t n = PAGE_SIZE - head < left ? PAGE_SIZE - head : left;
        uint8_t *out = n == PAGE_SIZE ? dst : tmp; /* whole pages decode in place */
        if (read_one(s, pn, out, now) != 0)
            return -1;
        if (out == tmp)
            memcpy(dst, tmp + head, n);
        dst += n;
        left -= n;
        head = 0;
        pn++;
    }
    return 0;
}

/* discard of one whole page (store.py's discard_page): its entry made empty, or in image mode
 * a zero page newer than the file (the file may hold older contents), its object freed.
 * PAGE_PYTHON, nothing changed, for a page whose old object the Python path must release
 * (recompressed or shared). */
static int discard_page(StoreObject *s, uint32_t pn, uint32_t stamp)
{
    int rc = PAGE_DONE;
    lock_take(s->lock);
    if (python_owned(s, pn)) {
        rc = PAGE_PYTHON;
    } else {
        uint32_t entry = s->persistent ? SAME : EMPTY;
        if (store_swap(s, pn, entry, s->persistent ? stamp : 0, 0, 0, 0, 0) != 0)
            rc = PAGE_NOT_LIVE;
        s->c->notify_free++;
    }
    lock_give(s->lock);
    return rc;
}

/* zeros written over [offset, end), which holds no whole page: one write request */
static int zero_range(StoreObject *s, uint64_t offset, uint64_t end)
{
    static const uint8_t zeros[2 * PAGE_SIZE];
    return end > offset ? store_write_req(s, offset, zeros, (size_t)(end - offset), 0) : 0;
}

int store_discard_req(StoreObject *s, uint64_t offset, uint64_t len)
{
    uint64_t end = offset + len; /* range_ok held: no wrap */
    uint64_t first = (offset + PAGE_SIZE - 1) / PAGE_SIZE, last = end / PAGE_SIZE;
    lock_take(s->lock);
    s->c->discards++;
    lock_give(s->lock);
    if (first >= last) /* no whole page: zeroed (at most two partial pages) */
        return zero_range(s, offset, end);
    if (zero_range(s, offset, first * PAGE_SIZE) != 0)
        return -1;
    uint32_t stamp = store_now(s) | DIRTY;
    for (uint64_t pn = first; pn < last; pn++) {
        int rc = discard_page(s, (uint32_t)pn, stamp);
        if (rc == PAGE_PYTHON) {
            if (call_back(s, "_discard_slow", NULL, "Ik", (unsigned int)pn,
                          (unsigned long)stamp) != 0)
                return -1;
        } else if (rc != PAGE_DONE) {
            return fail_page(rc, (uint32_t)pn);
        }
    }
    return zero_range(s, last * PAGE_SIZE, end);
}

/* the Python faces of the request cores: argument checks, the GIL let go around the core, a
 * failure that is not a StoreError counted and raised as StorageFailure (wrap_failure) */

/* the checks every request method makes first: -1 with the exception set */
static int request_check(StoreObject *s, const char *what, unsigned long long offset,
                         unsigned long long len)
{
    if (store_check(s) != 0)
        return -1;
    if (lock_held(s->lock)) { /* the core takes it page by page: it would wait for itself */
        PyErr_Format(PyExc_RuntimeError, "%s: called with the store lock held", what);
        return -1;
    }
    if (!range_ok(s, offset, len)) {
        PyErr_Format(PyExc_ValueError, "%s of %llu bytes at %llu: past the end of the image",
                     what, len, offset);
        return -1;
    }
    return 0;
}

/* write(offset, data, stamp=0): one write request */
static PyObject *Store_write(StoreObject *s, PyObject *args)
{
    unsigned long long offset;
    unsigned long stamp = 0;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "O&y*|k", offset_arg, &offset, &data, &stamp))
        return NULL;
    if (request_check(s, "write", offset, (unsigned long long)data.len) != 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = store_write_req(s, offset, data.buf, (size_t)data.len, (uint32_t)stamp);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (rc != 0)
        return store_wrap_failure(s, 1, offset, 0);
    Py_RETURN_NONE;
}

/* read(offset, size) -> bytes: one read request */
static PyObject *Store_read(StoreObject *s, PyObject *args)
{
    unsigned long long offset;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "O&n", offset_arg, &offset, &size))
        return NULL;
    if (size < 0)
        return PyErr_Format(PyExc_ValueError, "read of %zd bytes: a size is not negative", size);
    if (request_check(s, "read", offset, (unsigned long long)size) != 0)
        return NULL;
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (!result || !size)
        return result;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = store_read_req(s, offset, (size_t)size, (uint8_t *)PyBytes_AS_STRING(result));
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(result);
        return store_wrap_failure(s, 0, offset, size);
    }
    return result;
}

/* discard(offset, length): one discard request (FALLOCATE's punch hole) */
static PyObject *Store_discard(StoreObject *s, PyObject *args)
{
    unsigned long long offset, len;
    if (!PyArg_ParseTuple(args, "O&O&", offset_arg, &offset, offset_arg, &len))
        return NULL;
    if (request_check(s, "discard", offset, len) != 0)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = store_discard_req(s, offset, len);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return store_wrap_failure(s, 1, offset, 0);
    Py_RETURN_NONE;
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

/* _swap_entry(pn, entry, size, meta, word=0, keep_old=False): store.py's _swap of the page's
 * word (entry and meta committed together) and the counters (the caller holds the store lock;
 * native.py's _swap keeps the slot and dedup counts) */
static PyObject *Store_swap(StoreObject *s, PyObject *args)
{
    PyObject *pnobj;
    unsigned long entry, meta;
    unsigned long long word = 0;
    int size, keep_old = 0;
    uint32_t pn;
    if (!PyArg_ParseTuple(args, "Okik|Kp", &pnobj, &entry, &size, &meta, &word, &keep_old) ||
        store_check(s) || require_held(s->lock, "_swap_entry") || parse_pn(s, pnobj, &pn))
        return NULL;
    if (lock_enter(s->pool->lock))
        return NULL;
    int rc = store_swap(s, pn, (uint32_t)entry, (uint32_t)meta, word, size, 1, keep_old);
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
    uint32_t entry = IDX(s, pn);
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
    fill_put(s, pn, word);
    Py_RETURN_NONE;
}

/* _commit(pn, entry, meta): page pn's word set as it is, nothing let go, no counter moved
 * (store lock held): dedup's switch of a page to the object it now shares (S1) */
static PyObject *Store_commit(StoreObject *s, PyObject *args)
{
    PyObject *pnobj;
    unsigned long entry, meta;
    uint32_t pn;
    if (!PyArg_ParseTuple(args, "Okk", &pnobj, &entry, &meta) || store_check(s) ||
        require_held(s->lock, "_commit") || parse_pn(s, pnobj, &pn))
        return NULL;
    if (s->inflight_n) {
        Inflight *f = inflight_find(s, pn);
        if (f)
            f->rewritten = 1;
    }
    store_commit(s, pn, (uint32_t)entry, (uint32_t)meta);
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

/* _set_slot(slot, name, level, dictionary, digest): slot *slot*'s codec recorded in the region
 * (its name, level and dictionary: a new process rebuilds the codec from it), before any page
 * can name the slot (S1); with *digest*, the dictionary the compiled recompression writes the
 * slot with, digested with the GIL released and no lock held (it takes a while at high
 * levels), then swapped in under the store lock, which the caller must not hold */
static PyObject *Store_set_slot(StoreObject *s, PyObject *args)
{
    PyObject *slotobj;
    const char *name;
    int slot, level, digest;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "Osiy*p", &slotobj, &name, &level, &b, &digest))
        return NULL;
    if (store_check(s) || parse_slot(slotobj, &slot)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    if (!*name || strlen(name) >= SLOT_NAME || b.len > DICT_MAX) {
        PyBuffer_Release(&b);
        return PyErr_Format(PyExc_ValueError, "a slot's codec is named in 1..%d bytes, with a "
                            "dictionary of at most %d bytes", SLOT_NAME - 1, DICT_MAX);
    }
    ZSTD_CDict *cd = NULL;
    ZSTD_DDict *dd = NULL;
    if (digest) {
        Py_BEGIN_ALLOW_THREADS
        cd = ZSTD_createCDict(b.buf, (size_t)b.len, level);
        dd = ZSTD_createDDict(b.buf, (size_t)b.len);
        Py_END_ALLOW_THREADS
    }
    SlotDict *sd = cd && dd ? slot_dict_new(cd, dd) : NULL;
    if (digest && !sd) {
        ZSTD_freeCDict(cd);
        ZSTD_freeDDict(dd);
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    if (lock_enter(s->lock) != 0) {
        slot_dict_unpin(sd);
        PyBuffer_Release(&b);
        return NULL;
    }
    SlotRecord *r = &s->hdr->slots[slot];
    /* S1: the record whole before its name says it is there */
    __atomic_store_n(&r->name[0], 0, __ATOMIC_RELEASE);
    memcpy((char *)s->hdr + s->hdr->off_dicts + (size_t)slot * DICT_MAX, b.buf, (size_t)b.len);
    r->len = (uint32_t)b.len;
    r->level = level;
    memcpy(r->name + 1, name + 1, strlen(name));
    __atomic_store_n(&r->name[0], name[0], __ATOMIC_RELEASE);
    crash_point("slot.recorded");
    slot_dict_set(s, slot, sd);
    lock_give(s->lock);
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* _drop_slot(slot): slot *slot* is gone (store lock held by the caller; no page names it any
 * more: S2): its record cleared, its dictionary gone with the last reference (a step or a read
 * that pinned it finishes with it first) */
static PyObject *Store_drop_slot(StoreObject *s, PyObject *arg)
{
    int slot;
    if (store_check(s) || require_held(s->lock, "_drop_slot") || parse_slot(arg, &slot))
        return NULL;
    __atomic_store_n(&s->hdr->slots[slot].name[0], 0, __ATOMIC_RELEASE);
    slot_dict_set(s, slot, NULL);
    Py_RETURN_NONE;
}

/* _slot_record(slot) -> (name, level, dictionary) or None: what the region says slot *slot*
 * holds (a store taken over rebuilds its codecs from it) */
static PyObject *Store_slot_record(StoreObject *s, PyObject *arg)
{
    int slot;
    if (!s->ready || parse_slot(arg, &slot))
        return s->ready ? NULL : PyErr_Format(PyExc_RuntimeError, "store not set up");
    const SlotRecord *r = &s->hdr->slots[slot];
    if (!r->name[0])
        Py_RETURN_NONE;
    if (r->len > DICT_MAX || !memchr(r->name, 0, SLOT_NAME))
        return PyErr_Format(PyExc_ValueError, "codec slot %d's record is damaged", slot);
    return Py_BuildValue("(siy#)", r->name, r->level,
                         (const char *)s->hdr + s->hdr->off_dicts + (size_t)slot * DICT_MAX,
                         (Py_ssize_t)r->len);
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
    *entry = IDX(s, pn);
    if (*entry >= FIRST_HANDLE && (META(s, pn) & (SLOT_MASK | SHARED)))
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
    uint32_t meta = META(s, pn);
    /* a slot dropped (or given another dictionary) meanwhile must not gain the page */
    int slot_changed = s->dicts[slot] != sd;
    if (inflight_take(s, pn) || IDX(s, pn) != entry || (meta & SHARED) || slot_changed) {
        if (h) {
            lock_take(s->pool->lock);
            pool_free_locked(s->pool, h);
            lock_give(s->pool->lock);
        }
        rc = STEP_GONE;
    } else if (!h) {
        META(s, pn) = meta | MARK;
        s->c->recompress_not_worth++;
        rc = STEP_SKIP;
    } else if (crash_point("recode.placed"),
               store_swap(s, pn, (uint32_t)h,
                          (meta & (AGE_MASK | DIRTY)) | (uint32_t)slot << SLOT_SHIFT, 0, n, 0,
                          0) != 0) {
        lock_take(s->pool->lock);
        pool_free_locked(s->pool, h);
        lock_give(s->pool->lock);
        rc = STEP_PYTHON; /* the old handle is not live: the Python path raises it */
    } else {
        s->slot_pages[slot]++;
        s->c->recompressions++;
        s->c->recompress_saved_bytes += len - n;
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
    int clean = s->persistent && !(META(s, pn) & DIRTY);
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

    crash_point("writeback.written");
    int rc;
    lock_take(s->lock);
    if (inflight_take(s, pn) || IDX(s, pn) != entry) {
        rc = STEP_GONE; /* rewritten while we wrote: the pool copy is newer */
    } else if (failed || (META(s, pn) & (SLOT_MASK | SHARED)) ||
               store_swap(s, pn, BACKED, META(s, pn) & AGE_MASK /* clean, no codec */, 0, 0, 0,
                          0) != 0) {
        rc = STEP_PYTHON;
    } else {
        s->c->written_back_pages++;
        if (!clean)
            s->c->bd_writes++;
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

/* Flush (image mode) ---------------------------------------------------------------------- */

/* store.py's flush_page for one page, GIL released: claim it (in flight) and copy out what it
 * holds under the store lock, decode it unlocked (with its slot's pinned dictionary when it
 * was recompressed), write it to the backing file under the file lock unless it was rewritten
 * meanwhile, then clear its dirty bit unless it was rewritten. STEP_DONE when it was written,
 * STEP_SKIP when there was nothing to write (a page held only in the file); STEP_PYTHON, with
 * nothing changed, for what the Python path must do (a slot C has no dictionary for, a handle
 * not live, a payload that does not decode, a failed write, which it counts and raises). */
static int flush_one(StoreObject *s, uint32_t pn, uint8_t *payload, uint8_t *page)
{
    SlotDict *sd = NULL;
    uint64_t word = 0;
    int len = -1;
    lock_take(s->lock);
    uint32_t entry = IDX(s, pn), meta = META(s, pn);
    int slot = (int)((meta & SLOT_MASK) >> SLOT_SHIFT);
    if (entry >= FIRST_HANDLE && slot && !s->dicts[slot]) {
        lock_give(s->lock);
        return STEP_PYTHON;
    }
    if (inflight_add(s, pn) != 0) {
        lock_give(s->lock);
        return STEP_NOMEM;
    }
    if (entry == SAME) {
        word = fill_get(s, pn);
    } else if (entry >= FIRST_HANDLE) {
        sd = slot ? slot_dict_pin(s, slot) : NULL;
        lock_take(s->pool->lock);
        len = pool_read_locked(s->pool, entry, payload);
        lock_give(s->pool->lock);
    }
    lock_give(s->lock);

    const uint8_t *src = NULL;
    int bad = 0;
    if (entry == SAME) {
        fill_words(page, word);
        src = page;
    } else if (entry >= FIRST_HANDLE) {
        if (len == PAGE_SIZE)
            src = payload;
        else if (len >= 0 && (sd ? dict_decompress_page(sd->d, payload, len, page)
                                 : decompress_page(s->codec, payload, len, page)) == 0)
            src = page;
        else
            bad = 1;
    }
    slot_dict_unpin(sd);
    int written = 0;
    if (src) {
        lock_take(s->file_lock);
        lock_take(s->lock);
        Inflight *f = inflight_find(s, pn);
        int rewritten = !f || f->rewritten;
        lock_give(s->lock);
        if (!rewritten) {
            bad = s->backing_fd < 0 ||
                  pwrite(s->backing_fd, src, PAGE_SIZE, (off_t)pn * PAGE_SIZE) != PAGE_SIZE;
            written = !bad;
        }
        lock_give(s->file_lock);
    }

    int rc;
    lock_take(s->lock);
    int rewritten = inflight_take(s, pn);
    if (bad) {
        rc = STEP_PYTHON;
    } else {
        if (!rewritten) { /* rewritten meanwhile: stays dirty for next time */
            META(s, pn) &= ~DIRTY;
            if (src)
                s->c->bd_writes++;
        }
        rc = written ? STEP_DONE : STEP_SKIP;
    }
    lock_give(s->lock);
    return rc;
}

static int flush_step(StoreObject *s, uint32_t pn, const void *arg, uint8_t *bufs)
{
    return flush_one(s, pn, bufs, bufs + PAGE_SIZE);
}

/* _flush_batch(indices) -> (done, at): flush_page for each page in C (see run_batch) */
static PyObject *Store_flush_batch(StoreObject *s, PyObject *seq)
{
    if (store_check(s))
        return NULL;
    if (!s->has_backing || !s->persistent)
        return PyErr_Format(PyExc_RuntimeError, "flush: not an image with a backing file");
    return run_batch(s, seq, flush_step, NULL, (size_t)PAGE_SIZE * 2);
}

/* fsync of the backing file under the file lock (so the descriptor is not detached under it);
 * 0, or the errno */
static int sync_backing(StoreObject *s)
{
    lock_take(s->file_lock);
    int err = s->backing_fd < 0 ? EBADF : fsync(s->backing_fd) != 0 ? errno : 0;
    lock_give(s->file_lock);
    return err;
}

int store_flush_req(StoreObject *s)
{
    if (!s->persistent || !s->has_backing)
        return 0;
    uint8_t *bufs = malloc(2 * PAGE_SIZE);
    if (!bufs) {
        PyGILState_STATE g = PyGILState_Ensure();
        PyErr_NoMemory();
        PyGILState_Release(g);
        return -1;
    }
    int failed = 0;
    for (uint64_t pn = 0; pn < s->npages && !failed; pn++) {
        /* a hint read without the lock, as store.py's flush picks its pages */
        if (!(__atomic_load_n(&META(s, pn), __ATOMIC_RELAXED) & DIRTY))
            continue;
        int rc = flush_one(s, (uint32_t)pn, bufs, bufs + PAGE_SIZE);
        if (rc == STEP_PYTHON)
            failed = call_back(s, "_flush_slow", NULL, "I", (unsigned int)pn) != 0;
        else if (rc == STEP_NOMEM)
            failed = fail_page(PAGE_NOMEM, (uint32_t)pn) != 0;
    }
    free(bufs);
    if (failed)
        return -1;
    int err = sync_backing(s);
    if (err) {
        PyGILState_STATE g = PyGILState_Ensure();
        lock_wait(s->lock);
        s->c->bd_errors++;
        lock_give(s->lock);
        storage_failure("flush: fsync of the backing file: %s", strerror(err));
        PyGILState_Release(g);
        return -1;
    }
    return 0;
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
    if (s->hdr)
        s->hdr->t0 = t0;
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

static PyObject *Store_get_t0(StoreObject *s, void *c)
{
    return PyFloat_FromDouble(s->t0);
}

/* the counters: in the region once set up (a plain load or store: each is changed under the
 * store lock, or with an atomic add for requests) */
static PyObject *Store_get_counter(StoreObject *s, void *off)
{
    return PyLong_FromLongLong(*(long long *)((char *)s->c + (intptr_t)off));
}

static int Store_set_counter(StoreObject *s, PyObject *v, void *off)
{
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "a counter cannot be deleted");
        return -1;
    }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    *(long long *)((char *)s->c + (intptr_t)off) = x;
    return 0;
}

static PyGetSetDef Store_getset[] = {
    {"_lock", (getter)Store_get_lock, NULL, "the store lock", NULL},
    {"_file_lock_c", (getter)Store_get_file_lock, NULL, "the backing-file write lock", NULL},
    {"_inflight_count", (getter)Store_get_inflight, NULL, "pages in flight (takes the store lock)",
     NULL},
    {"_region_t0", (getter)Store_get_t0, NULL, "the clock's origin (the region's, once set up)",
     NULL},
#define COUNTER_GETSET(name)                                                                   \
    {#name, (getter)Store_get_counter, (setter)Store_set_counter, NULL,                        \
     (void *)(intptr_t)offsetof(Counters, name)},
    STORE_COUNTERS(COUNTER_GETSET)
#undef COUNTER_GETSET
    {NULL},
};

static PyMethodDef Store_methods[] = {
    {"_setup", (PyCFunction)(void (*)(void))Store_setup, METH_VARARGS | METH_KEYWORDS, NULL},
    {"write", (PyCFunction)Store_write, METH_VARARGS,
     "write(offset, data, stamp=0): one request (stamp: the pages' meta, 0 for now)"},
    {"read", (PyCFunction)Store_read, METH_VARARGS, "read(offset, size) -> bytes: one request"},
    {"discard", (PyCFunction)Store_discard, METH_VARARGS,
     "discard(offset, length): whole pages freed (read as zeros), partial ones zeroed"},
    {"_swap_entry", (PyCFunction)Store_swap, METH_VARARGS,
     "_swap_entry(pn, entry, size, meta, word=0, keep_old=False): store.py's _swap in C; "
     "store lock held"},
    {"_peek", (PyCFunction)Store_peek, METH_O, "_peek(pn) -> (entry, payload or None)"},
    {"_rewritten", (PyCFunction)Store_rewritten, METH_O, "_rewritten(pn); store lock held"},
    {"_was_rewritten", (PyCFunction)Store_was_rewritten, METH_O, "store lock held"},
    {"_fill_word", (PyCFunction)Store_fill_word, METH_O,
     "_fill_word(pn) -> word; store lock held"},
    {"_fill_set", (PyCFunction)Store_fill_set, METH_VARARGS, "_fill_set(pn, word); store lock held"},
    {"_commit", (PyCFunction)Store_commit, METH_VARARGS,
     "_commit(pn, entry, meta): the page's word as it is; store lock held"},
    {"_adopt", (PyCFunction)Store_adopt, METH_O,
     "_adopt(region_fd) -> bytes: a store taken over made whole (the pool rebuilt, every "
     "page of the state faulted in)"},
    {"_slot_record", (PyCFunction)Store_slot_record, METH_O,
     "_slot_record(slot) -> (name, level, dictionary) or None"},
    {"_set_slot", (PyCFunction)Store_set_slot, METH_VARARGS,
     "_set_slot(slot, name, level, dictionary, digest); takes the store lock"},
    {"_drop_slot", (PyCFunction)Store_drop_slot, METH_O, "_drop_slot(slot); store lock held"},
    {"_detach_backing", (PyCFunction)Store_detach_backing, METH_NOARGS, NULL},
    {"_set_clock", (PyCFunction)Store_set_clock, METH_VARARGS, "_set_clock(t0, fixed_now)"},
    {"_flush_batch", (PyCFunction)Store_flush_batch, METH_O,
     "_flush_batch(indices) -> (done, at)"},
    {"_writeback_batch", (PyCFunction)Store_writeback_batch, METH_O,
     "_writeback_batch(indices) -> (done, at)"},
    {"_recompress_batch", (PyCFunction)Store_recompress_batch, METH_VARARGS,
     "_recompress_batch(indices, slot, min_gain) -> (done, pages left to Python)"},
    {NULL},
};

PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zswapfs.engine._native.Store",
    .tp_basicsize = sizeof(StoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The page index and request loop in C (see store.py for the design).",
    .tp_new = Store_new,
    .tp_dealloc = (destructor)Store_dealloc,
    .tp_traverse = (traverseproc)Store_traverse,
    .tp_clear = (inquiry)Store_clear,
    .tp_methods = Store_methods,
    .tp_getset = Store_getset,
};
