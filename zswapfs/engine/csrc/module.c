/* The compiled page engine: the pools, the page index and the request loop in C; this file
 * ties the objects below to Python as the module zswapfs.engine._native.
 *
 * It is a transcription of the readable Python reference (store.py, pools/zsmalloc.py,
 * pools/buddy.py, pools/__init__.py, arena.py), data structure for data structure, so that
 * both engines make the same placement decisions and keep the same counters;
 * tests/test_engine_diff.py drives both with the same random sequences and compares them. Read
 * the Python modules for the design (size classes, zspage geometry, fullness groups, buddy
 * placement, handle encoding, lock order); these files say only where they differ and why.
 *
 * Where it differs from the reference: the arena is one memfd (arena.h), a segment populated
 * at once when its first page is taken (the mlocked daemon would fault it in anyway); and
 * what cannot be derived lives in memfds a new process takes over after a crash or an
 * upgrade (pool.h, store.h: the invariants that keep it readable at any instant;
 * docs/restart.md). The Python engine keeps everything in its process.
 *
 * The files, one object each, with a header saying what it owns and which lock guards what:
 *   common.h      system headers, page size, the reference's constants, the exception classes
 *   lock.c        Lock: a pthread mutex with an owner that Python can hold too
 *   arena.c       Arena: one memfd, lowest-first free map, hole punching, warm pages
 *   pool.c        Pool: handle table, what both strategies share, the Python type; the
 *                 strategy is chosen at set-up and pool.h's pool_*_locked functions dispatch
 *   zsmalloc.c    zsmalloc's size classes, zspages and fullness groups
 *   buddy.c       zbud's and z3fold's page records and unbuddied lists
 *   codec.c       lz4 and zstd on one page, per-thread zstd contexts, dictionaries
 *   workers.c     the page workers that compress a big write's pages on spare cores
 *   store.c       Store: the index, the request cores, writeback, flush and recompression
 *   frontend.c    Frontend: the mount served in C by libfuse's worker threads
 *   keeper.c      the keeper: holds a supervised server's memory (the state's pages locked)
 *                 while no server is there to (between a crash and the takeover)
 *   module.c      this file: the module, its functions and the exception classes
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
#include "frontend.h"

PyObject *PoolFullError;       /* pools.PoolFull */
PyObject *StorageFailureError; /* store.StorageFailure */
PyObject *StoreErrorBase;      /* store.StoreError */

int crash_armed;
static char crash_name[64];
static long crash_left;

void crash_hit(const char *name)
{
    if (strcmp(name, crash_name) == 0 && __atomic_sub_fetch(&crash_left, 1, __ATOMIC_ACQ_REL) == 0)
        kill(getpid(), SIGKILL);
}

/* ZSWAPFS_CRASH_AT="name:N" (N >= 1) arms crash_point(name) for its Nth pass */
static void crash_arm(void)
{
    const char *spec = getenv("ZSWAPFS_CRASH_AT");
    const char *colon = spec ? strrchr(spec, ':') : NULL;
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(crash_name))
        return;
    long n = strtol(colon + 1, NULL, 10);
    if (n < 1)
        return;
    memcpy(crash_name, spec, (size_t)(colon - spec));
    crash_name[colon - spec] = 0;
    crash_left = n;
    crash_armed = 1;
}

/* _crash_point(name): a crash point the Python code passes (store.py's dedup) */
static PyObject *py_crash_point(PyObject *mod, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    crash_point(name);
    Py_RETURN_NONE;
}

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
    {"_set_workers", py_set_workers, METH_VARARGS, "_set_workers(n, min_pages)"},
    {"_workers", py_workers_stats, METH_NOARGS, "_workers() -> dict"},
    {"_store_layout", py_store_layout, METH_O,
     "_store_layout(npages) -> (bytes, off_entries, off_fill): the store's persistent region"},
    {"_crash_point", py_crash_point, METH_O, "_crash_point(name): see common.h"},
    {"_spawn_keeper", py_spawn_keeper, METH_O,
     "_spawn_keeper(channel_fd) -> pid: a process holding this one's memory (keeper.c)"},
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
        pthread_key_create(&scratch_key, scratch_free) != 0 || frontend_init() != 0)
        return PyErr_NoMemory();
    crash_arm();
    PoolFullError = Py_NewRef(PyExc_MemoryError);
    StorageFailureError = Py_NewRef(PyExc_OSError);
    StoreErrorBase = Py_NewRef(PyExc_OSError);
    if (PyType_Ready(&LockType) < 0 || PyType_Ready(&PoolType) < 0 ||
        PyType_Ready(&StoreType) < 0 || PyType_Ready(&FrontendType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0 ||
        PyModule_AddObjectRef(m, "Pool", (PyObject *)&PoolType) < 0 ||
        PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0 ||
        PyModule_AddObjectRef(m, "Frontend", (PyObject *)&FrontendType) < 0 ||
        PyModule_AddIntConstant(m, "FUSE_VERSION", fuse_version()) < 0 ||
        PyModule_AddIntConstant(m, "FRONTEND_MAX_IO", FRONTEND_MAX_IO) < 0 ||
        PyModule_AddIntConstant(m, "STORE_FORMAT", STORE_FORMAT) < 0 ||
        PyModule_AddIntConstant(m, "POOL_FORMAT", POOL_FORMAT) < 0 ||
        PyModule_AddIntConstant(m, "LZ4_VERSION", LZ4_versionNumber()) < 0 ||
        PyModule_AddIntConstant(m, "ZSTD_VERSION", (long)ZSTD_versionNumber()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
