/* Pool: the handle table and what both strategies share, and the Python type (see pool.h). */
#include "pool.h"

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

/* a new handle for *loc*, or 0 when every handle is in use or memory ran out */
uint64_t handle_new(PoolObject *p, uint64_t loc)
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
    if (!p->ready || p->closed) {
        PyErr_SetString(PyExc_RuntimeError, p->closed ? "the pool is closed" : "pool not set up");
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
