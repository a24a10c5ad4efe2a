/* Frontend: see frontend.h. */
#include "frontend.h"

#include <linux/falloc.h>
#include <linux/fuse.h>
#include <sys/statvfs.h>

/* the inodes and file handles of files.py */
#define ROOT_INODE 1
#define IMAGE_INODE 2
#define STATS_INODE 3
#define CONTROL_INODE 4
/* room for the kernel's FUSE_INIT when mount() reads it itself (the kernel asks for at least
 * FUSE_MIN_READ_BUFFER, 8 KiB) */
#define INIT_BUFFER (64 * 1024)
/* FRONTEND_MAX_IO (frontend.h) in use: the largest write the kernel sends (asked in init) and
 * the largest read (the max_read mount option, which init must repeat) */

static PyObject *FsErrorType; /* files.FsError, handed to the constructor */

/* Python on a worker thread ----------------------------------------------------------------- */

static pthread_key_t py_key; /* non-NULL once this thread keeps a Python thread state */

/* a worker ends (libfuse cancels and joins them before serve() returns): its thread state goes */
static void py_thread_end(void *marker)
{
    PyThreadState *ts = PyGILState_GetThisThreadState();
    if (ts) {
        PyEval_RestoreThread(ts);
        PyGILState_Release(PyGILState_UNLOCKED); /* the last count: the state is deleted */
    }
}

/* the GIL for this thread; the first time, a thread state it keeps (taken once and its GIL let
 * go, so later PyGILState calls nest inside it and an exception set by a store callback lives
 * until the handler clears it) */
static PyGILState_STATE py_enter(void)
{
    if (!pthread_getspecific(py_key) && !PyGILState_GetThisThreadState()) {
        PyGILState_Ensure();
        PyEval_SaveThread();
        pthread_setspecific(py_key, (void *)1);
    }
    return PyGILState_Ensure();
}

/* GIL held: the errno of the exception being handled (cleared): an FsError's own, or EIO for
 * anything else, logged by files.failure(what, exc) */
static int exception_errno(FrontendObject *fe, const char *what)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int err = EIO;
    if (value && PyObject_IsInstance(value, FsErrorType) == 1) {
        PyObject *e = PyObject_GetAttrString(value, "errno");
        long v = e ? PyLong_AsLong(e) : -1;
        Py_XDECREF(e);
        if (v > 0)
            err = (int)v;
        PyErr_Clear();
    } else if (value) {
        if (tb)
            PyException_SetTraceback(value, tb);
        PyObject *r = PyObject_CallMethod(fe->files, "failure", "sO", what, value);
        long v = r ? PyLong_AsLong(r) : -1;
        Py_XDECREF(r);
        if (v > 0)
            err = (int)v;
        PyErr_Clear();
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return err;
}

/* GIL held: files.<method>(*args built from fmt); NULL with *err set when it raised */
static PyObject *call_files(FrontendObject *fe, int *err, const char *method, const char *fmt,
                            ...)
{
    __atomic_add_fetch(&fe->py_requests, 1, __ATOMIC_RELAXED);
    va_list va;
    va_start(va, fmt);
    PyObject *args = Py_VaBuildValue(fmt, va);
    va_end(va);
    PyObject *fn = args ? PyObject_GetAttrString(fe->files, method) : NULL;
    PyObject *res = fn ? PyObject_Call(fn, args, NULL) : NULL;
    Py_XDECREF(fn);
    Py_XDECREF(args);
    if (!res)
        *err = exception_errno(fe, method);
    return res;
}

/* a failed store request *what* (the GIL not held): the exception its core left, counted and
 * made a StorageFailure as the store's Python methods do (store_wrap_failure), then the errno
 * files.py answers for it (io_failure: ENOSPC for StoreFull, EIO for the rest, with its log
 * line) */
static int store_errno(FrontendObject *fe, const char *what, uint64_t off, size_t len)
{
    int writing = strcmp(what, "read") != 0;
    PyGILState_STATE g = py_enter();
    store_wrap_failure(fe->store, writing, off, (Py_ssize_t)len);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int err = EIO;
    if (value) {
        PyObject *r = PyObject_CallMethod(fe->files, "io_failure", "sKnO", what,
                                          (unsigned long long)off, (Py_ssize_t)len, value);
        long v = r ? PyLong_AsLong(r) : -1;
        Py_XDECREF(r);
        if (v > 0)
            err = (int)v;
        PyErr_Clear();
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    PyGILState_Release(g);
    return err;
}

static void note_invalid_io(StoreObject *s)
{
    lock_take(s->lock);
    s->c->invalid_io++;
    lock_give(s->lock);
}

/* attributes ---------------------------------------------------------------------------------- */

/* files.Attr (a 12-tuple) into *st* and the two timeouts; -1 with an exception set */
static int attr_from(PyObject *a, struct stat *st, double *entry_timeout, double *attr_timeout)
{
    if (!PyTuple_Check(a) || PyTuple_GET_SIZE(a) != 12) {
        PyErr_SetString(PyExc_TypeError, "an Attr is a 12-tuple");
        return -1;
    }
    long long v[10];
    for (int i = 0; i < 10; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(a, i));
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
    }
    memset(st, 0, sizeof(*st));
    st->st_ino = (ino_t)v[0];
    st->st_mode = (mode_t)v[1];
    st->st_nlink = (nlink_t)v[2];
    st->st_uid = (uid_t)v[3];
    st->st_gid = (gid_t)v[4];
    st->st_size = (off_t)v[5];
    st->st_blocks = (blkcnt_t)v[6];
    st->st_blksize = PAGE_SIZE;
    st->st_atim.tv_sec = v[7] / 1000000000;
    st->st_atim.tv_nsec = v[7] % 1000000000;
    st->st_mtim.tv_sec = v[8] / 1000000000;
    st->st_mtim.tv_nsec = v[8] % 1000000000;
    st->st_ctim.tv_sec = v[9] / 1000000000;
    st->st_ctim.tv_nsec = v[9] % 1000000000;
    *entry_timeout = PyFloat_AsDouble(PyTuple_GET_ITEM(a, 10));
    *attr_timeout = PyFloat_AsDouble(PyTuple_GET_ITEM(a, 11));
    return PyErr_Occurred() ? -1 : 0;
}

/* GIL held: an entry reply from an Attr; 0 or an errno */
static int entry_from(FrontendObject *fe, PyObject *a, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof(*e));
    if (attr_from(a, &e->attr, &e->entry_timeout, &e->attr_timeout) != 0)
        return exception_errno(fe, "attr");
    e->ino = e->attr.st_ino;
    return 0;
}

/* the rare requests: files.py under the GIL ------------------------------------------------- */

static void fe_init(void *userdata, struct fuse_conn_info *conn)
{
    /* as pyfuse3 asks (fs.py): READDIRPLUS always, lookups of . and .. */
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_EXPORT_SUPPORT)
        conn->want |= FUSE_CAP_EXPORT_SUPPORT;
    if (conn->max_write > FRONTEND_MAX_IO)
        conn->max_write = FRONTEND_MAX_IO;
    conn->max_read = FRONTEND_MAX_IO; /* nativefs mounts with max_read=FRONTEND_MAX_IO */
}

static void fe_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    FrontendObject *fe = fuse_req_userdata(req);
    struct fuse_entry_param e;
    int err = 0;
    PyGILState_STATE g = py_enter();
    PyObject *a = call_files(fe, &err, "lookup", "(Ky)", (unsigned long long)parent, name);
    if (a) {
        err = entry_from(fe, a, &e);
        Py_DECREF(a);
    }
    PyGILState_Release(g);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_entry(req, &e);
}

/* GIL held: an attr reply from an Attr */
static void reply_attr(FrontendObject *fe, fuse_req_t req, PyObject *a, int err,
                       PyGILState_STATE g)
{
    struct stat st;
    double entry_timeout, attr_timeout = 0;
    if (a) {
        if (attr_from(a, &st, &entry_timeout, &attr_timeout) != 0)
            err = exception_errno(fe, "attr");
        Py_DECREF(a);
    }
    PyGILState_Release(g);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_attr(req, &st, attr_timeout);
}

static void fe_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    PyGILState_STATE g = py_enter();
    PyObject *a = call_files(fe, &err, "attr", "(K)", (unsigned long long)ino);
    reply_attr(fe, req, a, err, g);
}

static long long timespec_ns(const struct timespec *t)
{
    return (long long)t->tv_sec * 1000000000LL + t->tv_nsec;
}

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return timespec_ns(&t);
}

static void fe_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    long long atime = 0, mtime = 0;
    if (to_set & FUSE_SET_ATTR_ATIME)
        atime = to_set & FUSE_SET_ATTR_ATIME_NOW ? now_ns() : timespec_ns(&attr->st_atim);
    if (to_set & FUSE_SET_ATTR_MTIME)
        mtime = to_set & FUSE_SET_ATTR_MTIME_NOW ? now_ns() : timespec_ns(&attr->st_mtim);
    PyGILState_STATE g = py_enter();
    /* None for what is not to change: setattr(inode, size, mode, uid, gid, atime_ns, mtime_ns) */
    PyObject *args[6];
    args[0] = to_set & FUSE_SET_ATTR_SIZE ? PyLong_FromLongLong(attr->st_size) : Py_NewRef(Py_None);
    args[1] = to_set & FUSE_SET_ATTR_MODE ? PyLong_FromLong(attr->st_mode) : Py_NewRef(Py_None);
    args[2] = to_set & FUSE_SET_ATTR_UID ? PyLong_FromLong(attr->st_uid) : Py_NewRef(Py_None);
    args[3] = to_set & FUSE_SET_ATTR_GID ? PyLong_FromLong(attr->st_gid) : Py_NewRef(Py_None);
    args[4] = to_set & FUSE_SET_ATTR_ATIME ? PyLong_FromLongLong(atime) : Py_NewRef(Py_None);
    args[5] = to_set & FUSE_SET_ATTR_MTIME ? PyLong_FromLongLong(mtime) : Py_NewRef(Py_None);
    PyObject *a = NULL;
    if (args[0] && args[1] && args[2] && args[3] && args[4] && args[5])
        a = call_files(fe, &err, "setattr", "(KOOOOOO)", (unsigned long long)ino, args[0],
                       args[1], args[2], args[3], args[4], args[5]);
    else
        err = exception_errno(fe, "setattr");
    for (int i = 0; i < 6; i++)
        Py_XDECREF(args[i]);
    reply_attr(fe, req, a, err, g);
}

static void fe_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    PyGILState_STATE g = py_enter();
    PyObject *r = call_files(fe, &err, "open", "(Ki)", (unsigned long long)ino, fi->flags);
    unsigned long long fh = 0;
    int direct_io = 0;
    if (r && !PyArg_ParseTuple(r, "Kp", &fh, &direct_io))
        err = exception_errno(fe, "open");
    Py_XDECREF(r);
    PyGILState_Release(g);
    if (err) {
        fuse_reply_err(req, err);
        return;
    }
    fi->fh = fh;
    fi->direct_io = direct_io;
    fi->keep_cache = 0;
    if (fuse_reply_open(req, fi) == -ENOENT && fh != IMAGE_INODE) { /* interrupted: let go */
        g = py_enter();
        PyObject *x = call_files(fe, &err, "release", "(K)", fh);
        Py_XDECREF(x);
        PyGILState_Release(g);
    }
}

static void fe_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    if (fi->fh != IMAGE_INODE && fi->fh != CONTROL_INODE) { /* a stats snapshot */
        PyGILState_STATE g = py_enter();
        PyObject *r = call_files(fe, &err, "release", "(K)", (unsigned long long)fi->fh);
        Py_XDECREF(r);
        PyGILState_Release(g);
    }
    fuse_reply_err(req, err);
}

static void fe_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    PyGILState_STATE g = py_enter();
    PyObject *r = call_files(fe, &err, "opendir", "(K)", (unsigned long long)ino);
    if (r) {
        fi->fh = PyLong_AsUnsignedLongLong(r);
        if (PyErr_Occurred())
            err = exception_errno(fe, "opendir");
        Py_DECREF(r);
    }
    PyGILState_Release(g);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_open(req, fi);
}

static void fe_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    char *buf = calloc(1, size ? size : 1);
    size_t used = 0;
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    PyGILState_STATE g = py_enter();
    PyObject *rows = call_files(fe, &err, "readdir", "(L)", (long long)off);
    if (rows) {
        PyObject *fast = PySequence_Fast(rows, "readdir rows");
        Py_ssize_t n = fast ? PySequence_Fast_GET_SIZE(fast) : 0;
        for (Py_ssize_t i = 0; fast && i < n && !err; i++) {
            const char *name;
            PyObject *a;
            long long next;
            struct fuse_entry_param e;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "yOL", &name, &a, &next)) {
                err = exception_errno(fe, "readdir");
                break;
            }
            if ((err = entry_from(fe, a, &e)) != 0)
                break;
            size_t want = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, next);
            if (want > size - used)
                break; /* full: the kernel asks again from this entry */
            used += want;
        }
        if (!fast)
            err = exception_errno(fe, "readdir");
        Py_XDECREF(fast);
        Py_DECREF(rows);
    }
    PyGILState_Release(g);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_buf(req, buf, used);
    free(buf);
}

static void fe_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fuse_reply_err(req, 0);
}

static void fe_statfs(fuse_req_t req, fuse_ino_t ino)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    struct statvfs sv;
    memset(&sv, 0, sizeof(sv));
    PyGILState_STATE g = py_enter();
    PyObject *r = call_files(fe, &err, "statfs", "()");
    unsigned long long v[9];
    if (r && !PyArg_ParseTuple(r, "KKKKKKKKK", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                               &v[7], &v[8]))
        err = exception_errno(fe, "statfs");
    Py_XDECREF(r);
    PyGILState_Release(g);
    if (err) {
        fuse_reply_err(req, err);
        return;
    }
    sv.f_bsize = v[0];
    sv.f_frsize = v[1];
    sv.f_blocks = v[2];
    sv.f_bfree = v[3];
    sv.f_bavail = v[4];
    sv.f_files = v[5];
    sv.f_ffree = v[6];
    sv.f_favail = v[7];
    sv.f_namemax = v[8];
    fuse_reply_statfs(req, &sv);
}

/* the stats and control files: files.read / files.write under the GIL */
static void py_read(FrontendObject *fe, fuse_req_t req, uint64_t fh, size_t size, off_t off)
{
    int err = 0;
    PyGILState_STATE g = py_enter();
    PyObject *r = call_files(fe, &err, "read", "(KLn)", (unsigned long long)fh, (long long)off,
                             (Py_ssize_t)size);
    char *data = NULL;
    Py_ssize_t len = 0;
    if (r && PyBytes_AsStringAndSize(r, &data, &len) != 0)
        err = exception_errno(fe, "read");
    if (!err)
        fuse_reply_buf(req, data, (size_t)len); /* copied out: the GIL still held */
    Py_XDECREF(r);
    PyGILState_Release(g);
    if (err)
        fuse_reply_err(req, err);
}

static void py_write(FrontendObject *fe, fuse_req_t req, uint64_t fh, const char *buf,
                     size_t size, off_t off)
{
    int err = 0;
    long long written = 0;
    PyGILState_STATE g = py_enter();
    PyObject *r = call_files(fe, &err, "write", "(KLy#)", (unsigned long long)fh, (long long)off,
                             buf, (Py_ssize_t)size);
    if (r) {
        written = PyLong_AsLongLong(r);
        if (written < 0 && PyErr_Occurred())
            err = exception_errno(fe, "write");
        Py_DECREF(r);
    }
    PyGILState_Release(g);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_write(req, (size_t)written);
}

/* the image: the store's request cores, no Python --------------------------------------------- */

/* this thread's buffer for read replies, grown to the largest request seen */
static pthread_key_t buf_key;

typedef struct {
    size_t cap;
    uint8_t data[];
} ReadBuf;

static uint8_t *read_buffer(size_t size)
{
    ReadBuf *b = pthread_getspecific(buf_key);
    if (!b || b->cap < size) {
        ReadBuf *n = malloc(sizeof(ReadBuf) + size);
        if (!n)
            return NULL;
        n->cap = size;
        free(b);
        pthread_setspecific(buf_key, n);
        b = n;
    }
    return b->data;
}

static void fe_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    if (fi->fh != IMAGE_INODE) {
        py_read(fe, req, fi->fh, size, off);
        return;
    }
    __atomic_add_fetch(&fe->c_requests, 1, __ATOMIC_RELAXED);
    if (off < 0) {
        note_invalid_io(fe->store);
        fuse_reply_err(req, EINVAL);
        return;
    }
    if ((uint64_t)off >= fe->size || !size) { /* at or past the end: short, empty */
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    size_t len = size < fe->size - (uint64_t)off ? size : (size_t)(fe->size - (uint64_t)off);
    uint8_t *buf = read_buffer(len);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    if (store_read_req(fe->store, (uint64_t)off, len, buf) != 0)
        fuse_reply_err(req, store_errno(fe, "read", (uint64_t)off, len));
    else
        fuse_reply_buf(req, (const char *)buf, len);
}

static void fe_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    if (fi->fh == CONTROL_INODE) {
        py_write(fe, req, fi->fh, buf, size, off);
        return;
    }
    if (fi->fh != IMAGE_INODE) {
        fuse_reply_err(req, EBADF);
        return;
    }
    __atomic_add_fetch(&fe->c_requests, 1, __ATOMIC_RELAXED);
    if (off < 0 || (uint64_t)off >= fe->size) {
        note_invalid_io(fe->store);
        fuse_reply_err(req, off < 0 ? EINVAL : ENOSPC);
        return;
    }
    /* straddling the end: a short write of what fits */
    size_t len = size < fe->size - (uint64_t)off ? size : (size_t)(fe->size - (uint64_t)off);
    if (store_write_req(fe->store, (uint64_t)off, (const uint8_t *)buf, len, 0) != 0) {
        fuse_reply_err(req, store_errno(fe, "write", (uint64_t)off, len));
        return;
    }
    __atomic_store_n(&fe->last_write_ns, now_ns(), __ATOMIC_RELAXED);
    fuse_reply_write(req, len);
}

/* FALLOCATE: a punch hole (what a loop device sends for a discard) or a zeroed range, both
 * with KEEP_SIZE, frees the whole pages of the range and zeroes the rest (store_discard_req);
 * anything else (allocation, a size change, collapse, insert) is EOPNOTSUPP, after which a
 * loop device stops asking. */
static void fe_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    __atomic_add_fetch(&fe->c_requests, 1, __ATOMIC_RELAXED);
    if (fi->fh != IMAGE_INODE || (mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) &&
                                  mode != (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))) {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    if (off < 0 || len <= 0) {
        note_invalid_io(fe->store);
        fuse_reply_err(req, EINVAL);
        return;
    }
    if ((uint64_t)off >= fe->size) { /* past the end, the size kept: nothing to free */
        fuse_reply_err(req, 0);
        return;
    }
    uint64_t n = (uint64_t)len < fe->size - (uint64_t)off ? (uint64_t)len : fe->size - (uint64_t)off;
    if (store_discard_req(fe->store, (uint64_t)off, n) != 0)
        fuse_reply_err(req, store_errno(fe, "discard", (uint64_t)off, (size_t)n));
    else
        fuse_reply_err(req, 0);
}

static void fe_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fuse_reply_err(req, 0);
}

/* FSYNC: image mode writes every page newer in memory than in the backing file, then syncs */
static void fe_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    FrontendObject *fe = fuse_req_userdata(req);
    int err = 0;
    if (fi->fh == IMAGE_INODE) {
        __atomic_add_fetch(&fe->c_requests, 1, __ATOMIC_RELAXED);
        if (store_flush_req(fe->store) != 0)
            err = store_errno(fe, "fsync", 0, 0);
    }
    fuse_reply_err(req, err);
}

/* everything that would change the namespace is refused, as fs.py refuses it */
static void fe_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    fuse_reply_err(req, EPERM);
}

static void fe_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    fuse_reply_err(req, EPERM);
}

static void fe_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fuse_reply_err(req, EPERM);
}

static void fe_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    fuse_reply_err(req, EPERM);
}

static void fe_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    fuse_reply_err(req, EPERM);
}

static void fe_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    fuse_reply_err(req, EPERM);
}

static void fe_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    fuse_reply_err(req, EPERM);
}

static void fe_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    fuse_reply_err(req, ENOTSUP);
}

/* requests not listed (getxattr, listxattr, access, readlink, ...) are ENOSYS, as pyfuse3's
 * defaults answer them */
static const struct fuse_lowlevel_ops fe_ops = {
    .init = fe_init,
    .lookup = fe_lookup,
    .getattr = fe_getattr,
    .setattr = fe_setattr,
    .mknod = fe_mknod,
    .mkdir = fe_mkdir,
    .unlink = fe_unlink,
    .rmdir = fe_unlink,
    .symlink = fe_symlink,
    .rename = fe_rename,
    .link = fe_link,
    .open = fe_open,
    .read = fe_read,
    .write = fe_write,
    .flush = fe_flush,
    .release = fe_release,
    .fsync = fe_fsync,
    .opendir = fe_opendir,
    .releasedir = fe_releasedir,
    .statfs = fe_statfs,
    .setxattr = fe_setxattr,
    .create = fe_create,
    .fallocate = fe_fallocate,
    .readdirplus = fe_readdirplus,
};

/* libfuse's own messages, to Python's logging ------------------------------------------------ */

static void fe_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = 0;
    int py_level = level <= FUSE_LOG_ERR ? 40 : level == FUSE_LOG_WARNING ? 30
                                             : level == FUSE_LOG_DEBUG    ? 10
                                                                          : 20;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *logger = logging ? PyObject_CallMethod(logging, "getLogger", "s", "zswapfs.frontend")
                               : NULL;
    PyObject *r = logger ? PyObject_CallMethod(logger, "log", "is", py_level, msg) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(logger);
    Py_XDECREF(logging);
    PyErr_Clear();
    PyGILState_Release(g);
}

/* serving: the loop and the signals that end it ----------------------------------------------- */

static struct fuse_session *volatile active_session;
static volatile sig_atomic_t exit_signal;

static void on_exit_signal(int sig)
{
    exit_signal = sig;
    if (active_session)
        fuse_session_exit(active_session);
}

static const int EXIT_SIGNALS[] = {SIGTERM, SIGINT, SIGHUP};

/* Python face ---------------------------------------------------------------------------------- */

static int Frontend_init(FrontendObject *fe, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"store", "files", "fs_error", "threads", "clone_fd", NULL};
    PyObject *store, *files, *fs_error;
    int threads = 4, clone_fd = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OO|ip", kwlist, &StoreType, &store, &files,
                                     &fs_error, &threads, &clone_fd))
        return -1;
    if (threads < 1 || threads > 256) {
        PyErr_Format(PyExc_ValueError, "threads: %d out of range 1..256", threads);
        return -1;
    }
    if (fe->store) {
        PyErr_SetString(PyExc_RuntimeError, "a frontend is made once");
        return -1;
    }
    if (store_check((StoreObject *)store) != 0)
        return -1;
    Py_XSETREF(FsErrorType, Py_NewRef(fs_error));
    fe->store = (StoreObject *)Py_NewRef(store);
    fe->files = Py_NewRef(files);
    fe->size = fe->store->npages * PAGE_SIZE;
    fe->threads = threads;
    fe->clone_fd = clone_fd;
    return 0;
}

static void Frontend_dealloc(FrontendObject *fe)
{
    PyObject_GC_UnTrack(fe);
    if (fe->se) {
        if (fe->mountpoint)
            fuse_session_unmount(fe->se);
        fuse_session_destroy(fe->se);
        fe->se = NULL;
    }
    free(fe->mountpoint);
    Py_CLEAR(fe->store);
    Py_CLEAR(fe->files);
    Py_CLEAR(fe->init_request);
    Py_TYPE(fe)->tp_free((PyObject *)fe);
}

static int Frontend_traverse(FrontendObject *fe, visitproc visit, void *arg)
{
    Py_VISIT(fe->store);
    Py_VISIT(fe->files);
    return 0;
}

static int Frontend_clear(FrontendObject *fe)
{
    Py_CLEAR(fe->store);
    Py_CLEAR(fe->files);
    return 0;
}

/* mount(mountpoint, options): the session made and mounted (libfuse's mount: mount(2) as root,
 * fusermount3 otherwise), the kernel's FUSE_INIT read here (kept as init_request) and answered
 * by libfuse before serve() starts the loop */
static PyObject *Frontend_mount(FrontendObject *fe, PyObject *args)
{
    const char *mountpoint, *options;
    if (!PyArg_ParseTuple(args, "ss", &mountpoint, &options))
        return NULL;
    if (!fe->store || fe->se) {
        PyErr_SetString(PyExc_RuntimeError, fe->se ? "already mounted" : "not set up");
        return NULL;
    }
    char *argv[] = {"zswapfs", "-o", (char *)options, NULL};
    struct fuse_args fargs = FUSE_ARGS_INIT(3, argv);
    fuse_set_log_func(fe_log);
    fe->se = fuse_session_new(&fargs, &fe_ops, sizeof(fe_ops), fe);
    if (!fe->se)
        return PyErr_Format(PyExc_OSError, "cannot make a FUSE session with options %s", options);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fuse_session_mount(fe->se, mountpoint);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        fuse_session_destroy(fe->se);
        fe->se = NULL;
        return PyErr_Format(PyExc_OSError, "cannot mount on %s", mountpoint);
    }
    fe->mountpoint = strdup(mountpoint);
    uint8_t *buf = malloc(INIT_BUFFER);
    ssize_t n = -1;
    int err = ENOMEM;
    if (buf) {
        int fd = fuse_session_fd(fe->se);
        Py_BEGIN_ALLOW_THREADS
        do
            n = read(fd, buf, INIT_BUFFER);
        while (n < 0 && errno == EINTR);
        err = errno;
        Py_END_ALLOW_THREADS
    }
    const struct fuse_in_header *in = (const void *)buf;
    if (n < (ssize_t)sizeof(*in) || in->opcode != FUSE_INIT) {
        free(buf);
        fuse_session_unmount(fe->se);
        fuse_session_destroy(fe->se);
        fe->se = NULL;
        free(fe->mountpoint);
        fe->mountpoint = NULL;
        return PyErr_Format(PyExc_OSError, "mount on %s: no FUSE_INIT from the kernel (%s)",
                            mountpoint, n < 0 ? strerror(err) : "another request");
    }
    Py_XSETREF(fe->init_request, PyBytes_FromStringAndSize((const char *)buf, n));
    struct fuse_buf fbuf = {.mem = buf, .size = (size_t)n};
    Py_BEGIN_ALLOW_THREADS
    fuse_session_process_buf(fe->se, &fbuf);
    Py_END_ALLOW_THREADS
    free(buf);
    if (!fe->init_request)
        return NULL;
    Py_RETURN_NONE;
}

/* The kernel's notice to send again the requests a server read and never answered (Linux 6.9;
 * Debian's headers are older): they go back to the queue, marked with FUSE_UNIQUE_RESEND */
#ifndef FUSE_NOTIFY_RESEND
#define FUSE_NOTIFY_RESEND 7
#endif
/* the unique of the INIT a takeover replays: no request of the kernel's ever has it (they count
 * up from 2 in steps of 2), so the kernel drops the reply (ENOENT, which libfuse ignores) */
#define REPLAY_UNIQUE (1ull << 62)

/* adopt(fd, options, init_request): the session of a mount another process made and served,
 * taken over (docs/restart.md): *fd* is its /dev/fuse descriptor (a supervisor kept it open, so
 * the mount stayed, its requests waiting), the session made over it (libfuse's "/dev/fd/N"
 * mount), the kernel's FUSE_INIT as it was first read replayed into libfuse (so it negotiates
 * what it did then; its answer goes nowhere), and the kernel told to send again the requests
 * the dead process had read but not answered (FUSE_NOTIFY_RESEND): serve() answers them. The
 * frontend owns *fd* from here on (closed on failure too); unmount() does nothing for it. */
static PyObject *Frontend_adopt(FrontendObject *fe, PyObject *args)
{
    int fd;
    const char *options;
    Py_buffer init;
    if (!PyArg_ParseTuple(args, "isy*", &fd, &options, &init))
        return NULL;
    const char *why = NULL;
    if (!fe->store || fe->se)
        why = fe->se ? "already mounted" : "not set up";
    else if ((size_t)init.len < sizeof(struct fuse_in_header) + sizeof(struct fuse_init_in) ||
             (size_t)init.len > INIT_BUFFER ||
             ((const struct fuse_in_header *)init.buf)->opcode != FUSE_INIT ||
             ((const struct fuse_in_header *)init.buf)->len != (uint32_t)init.len)
        why = "the INIT handed over is not a FUSE_INIT request";
    if (why) {
        PyBuffer_Release(&init);
        close(fd);
        PyErr_SetString(fe->store && !fe->se ? PyExc_ValueError : PyExc_RuntimeError, why);
        return NULL;
    }
    char *argv[] = {"zswapfs", "-o", (char *)options, NULL};
    struct fuse_args fargs = FUSE_ARGS_INIT(3, argv);
    fuse_set_log_func(fe_log);
    fe->se = fuse_session_new(&fargs, &fe_ops, sizeof(fe_ops), fe);
    char path[32];
    snprintf(path, sizeof(path), "/dev/fd/%d", fd);
    if (!fe->se || fuse_session_mount(fe->se, path) != 0) {
        PyBuffer_Release(&init);
        if (fe->se)
            fuse_session_destroy(fe->se);
        fe->se = NULL;
        close(fd);
        return PyErr_Format(PyExc_OSError, "cannot take the session of descriptor %d over", fd);
    }
    uint8_t *buf = malloc(INIT_BUFFER);
    if (!buf) {
        PyBuffer_Release(&init);
        return PyErr_NoMemory();
    }
    memcpy(buf, init.buf, (size_t)init.len);
    ((struct fuse_in_header *)buf)->unique = REPLAY_UNIQUE;
    struct fuse_buf fbuf = {.mem = buf, .size = (size_t)init.len};
    Py_XSETREF(fe->init_request, PyBytes_FromStringAndSize(init.buf, init.len));
    PyBuffer_Release(&init);
    struct fuse_out_header resend = {.len = sizeof(resend), .error = FUSE_NOTIFY_RESEND};
    ssize_t n;
    int err;
    Py_BEGIN_ALLOW_THREADS
    fuse_session_process_buf(fe->se, &fbuf);
    n = write(fuse_session_fd(fe->se), &resend, sizeof(resend));
    err = errno;
    Py_END_ALLOW_THREADS
    free(buf);
    if (!fe->init_request)
        return NULL;
    if (n != (ssize_t)sizeof(resend))
        /* ENODEV: the connection is gone (a stale descriptor); EINVAL: a kernel before 6.9,
         * which cannot send them again */
        return PyErr_Format(PyExc_OSError, "the kernel did not take FUSE_NOTIFY_RESEND: %s",
                            strerror(err));
    Py_RETURN_NONE;
}

/* serve() -> signal: the loop, the GIL let go, until a signal (its number), stop() or an
 * unmount (0) ends it */
static PyObject *Frontend_serve(FrontendObject *fe, PyObject *unused)
{
    if (!fe->se)
        return PyErr_Format(PyExc_RuntimeError, "not mounted");
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg)
        return PyErr_NoMemory();
    fuse_loop_cfg_set_max_threads(cfg, (unsigned int)fe->threads);
    fuse_loop_cfg_set_clone_fd(cfg, (unsigned int)fe->clone_fd);
    struct sigaction sa, old[3];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_exit_signal;
    sigemptyset(&sa.sa_mask);
    sigset_t exits, before;
    sigemptyset(&exits);
    for (int i = 0; i < 3; i++) {
        sigaction(EXIT_SIGNALS[i], &sa, &old[i]);
        sigaddset(&exits, EXIT_SIGNALS[i]);
    }
    exit_signal = 0;
    fe->stopped = 0;
    active_session = fe->se;
    fe->loop_thread = pthread_self();
    __atomic_store_n(&fe->serving, 1, __ATOMIC_RELEASE);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    pthread_sigmask(SIG_UNBLOCK, &exits, &before);
    rc = fuse_session_loop_mt(fe->se, cfg);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    Py_END_ALLOW_THREADS
    __atomic_store_n(&fe->serving, 0, __ATOMIC_RELEASE);
    active_session = NULL;
    for (int i = 0; i < 3; i++)
        sigaction(EXIT_SIGNALS[i], &old[i], NULL);
    fuse_loop_cfg_destroy(cfg);
    fuse_session_reset(fe->se);
    if (rc < 0 && !exit_signal && !fe->stopped)
        return PyErr_Format(PyExc_OSError, "the FUSE loop failed: %s", strerror(-rc));
    return PyLong_FromLong(fe->stopped ? 0 : exit_signal);
}

/* stop(): end serve() from another thread */
static PyObject *Frontend_stop(FrontendObject *fe, PyObject *unused)
{
    if (fe->se && __atomic_load_n(&fe->serving, __ATOMIC_ACQUIRE)) {
        fe->stopped = 1;
        fuse_session_exit(fe->se);
        pthread_kill(fe->loop_thread, SIGHUP); /* its handler is ours: wakes the loop's wait */
    }
    Py_RETURN_NONE;
}

/* unmount(): the mount undone (libfuse's unmount: umount2 as root, fusermount3 otherwise) */
static PyObject *Frontend_unmount(FrontendObject *fe, PyObject *unused)
{
    if (fe->se && fe->mountpoint) {
        Py_BEGIN_ALLOW_THREADS
        fuse_session_unmount(fe->se);
        Py_END_ALLOW_THREADS
        free(fe->mountpoint);
        fe->mountpoint = NULL;
    }
    Py_RETURN_NONE;
}

/* disown(): the mount is no longer this process's to undo (a supervisor keeps its session and
 * unmounts it: docs/restart.md); unmount(), close() and the end of the object leave it be */
static PyObject *Frontend_disown(FrontendObject *fe, PyObject *unused)
{
    free(fe->mountpoint);
    fe->mountpoint = NULL;
    Py_RETURN_NONE;
}

/* close(): the session let go (its /dev/fuse descriptor closed) */
static PyObject *Frontend_close(FrontendObject *fe, PyObject *unused)
{
    if (fe->se) {
        if (fe->mountpoint)
            Frontend_unmount(fe, NULL);
        fuse_session_destroy(fe->se);
        fe->se = NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Frontend_get_fd(FrontendObject *fe, void *c)
{
    return PyLong_FromLong(fe->se ? fuse_session_fd(fe->se) : -1);
}

static PyObject *Frontend_get_init_request(FrontendObject *fe, void *c)
{
    return Py_NewRef(fe->init_request ? fe->init_request : Py_None);
}

#define ATOMIC_GETTER(name)                                                                    \
    static PyObject *Frontend_get_##name(FrontendObject *fe, void *c)                          \
    {                                                                                          \
        return PyLong_FromLongLong(__atomic_load_n(&fe->name, __ATOMIC_RELAXED));              \
    }
ATOMIC_GETTER(last_write_ns)
ATOMIC_GETTER(c_requests)
ATOMIC_GETTER(py_requests)

static PyGetSetDef Frontend_getset[] = {
    {"fd", (getter)Frontend_get_fd, NULL, "the session's /dev/fuse descriptor (-1: none)", NULL},
    {"init_request", (getter)Frontend_get_init_request, NULL, "the kernel's FUSE_INIT", NULL},
    {"last_write_ns", (getter)Frontend_get_last_write_ns, NULL, "the image's last write", NULL},
    {"c_requests", (getter)Frontend_get_c_requests, NULL, "image requests served in C", NULL},
    {"py_requests", (getter)Frontend_get_py_requests, NULL, "requests that called Python",
     NULL},
    {NULL},
};

static PyMethodDef Frontend_methods[] = {
    {"mount", (PyCFunction)Frontend_mount, METH_VARARGS, "mount(mountpoint, options)"},
    {"adopt", (PyCFunction)Frontend_adopt, METH_VARARGS,
     "adopt(fd, options, init_request): a mount's session taken over"},
    {"serve", (PyCFunction)Frontend_serve, METH_NOARGS, "serve() -> the signal that ended it"},
    {"stop", (PyCFunction)Frontend_stop, METH_NOARGS, "stop(): end serve()"},
    {"unmount", (PyCFunction)Frontend_unmount, METH_NOARGS, NULL},
    {"disown", (PyCFunction)Frontend_disown, METH_NOARGS,
     "disown(): the mount is undone by another process, never by this one"},
    {"close", (PyCFunction)Frontend_close, METH_NOARGS, NULL},
    {NULL},
};

PyTypeObject FrontendType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zswapfs.engine._native.Frontend",
    .tp_basicsize = sizeof(FrontendObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The mount served in C by libfuse's worker threads (see frontend.h).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Frontend_init,
    .tp_dealloc = (destructor)Frontend_dealloc,
    .tp_traverse = (traverseproc)Frontend_traverse,
    .tp_clear = (inquiry)Frontend_clear,
    .tp_methods = Frontend_methods,
    .tp_getset = Frontend_getset,
};

/* the thread keys this file uses (module.c, at import) */
int frontend_init(void)
{
    return pthread_key_create(&py_key, py_thread_end) != 0 ||
                   pthread_key_create(&buf_key, free) != 0
               ? -1
               : 0;
}
