/* The C yardstick: the least a FUSE daemon can do for an image, in C with libfuse's low-level API.
 *
 * One directory holding one file (swap.img) of a fixed size, opened with direct_io, its pages
 * kept uncompressed in an anonymous mapping of the image's size (or dropped, reads answering
 * zeros, with keep off); FALLOCATE punch hole or zero range (what a loop device sends for a
 * discard) answered by writing zeros over the range (a yardstick of speed, not of memory: the
 * daemon is mlocked, so nothing is returned); statfs answered, so a loop device advertises
 * discard.
 * Requests are served by libfuse's multi-threaded loop (at most *threads* workers, each with a
 * /dev/fuse descriptor of its own with clone_fd) or, with one thread, by its single-threaded
 * loop. zswapfs's figures are quoted against it: what is left is what zswapfs adds.
 *
 * serve(mountpoint, size, threads=4, clone_fd=False, keep=True) -> signal number: blocks (the
 * GIL let go) until SIGTERM, SIGINT or SIGHUP, or an unmount; always unmounts. */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 312
#include <errno.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#define PAGE 4096
#define FILE_INODE 2
static const char NAME[] = "swap.img";

typedef struct {
    uint64_t size;
    uint8_t *data; /* NULL: writes dropped, reads zeros */
} Ram;

static void fill_stat(const Ram *r, fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    st->st_blksize = PAGE;
    st->st_uid = getuid();
    st->st_gid = getgid();
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0600;
        st->st_nlink = 1;
        st->st_size = (off_t)r->size;
    }
}

static void ram_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    Ram *r = fuse_req_userdata(req);
    struct fuse_entry_param e;
    if (parent != FUSE_ROOT_ID || strcmp(name, NAME) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof(e));
    e.ino = FILE_INODE;
    e.attr_timeout = e.entry_timeout = 300;
    fill_stat(r, FILE_INODE, &e.attr);
    fuse_reply_entry(req, &e);
}

static void ram_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    Ram *r = fuse_req_userdata(req);
    struct stat st;
    if (ino != FUSE_ROOT_ID && ino != FILE_INODE) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_stat(r, ino, &st);
    fuse_reply_attr(req, &st, 300);
}

static void ram_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino != FILE_INODE) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    fi->direct_io = 1;
    fuse_reply_open(req, fi);
}

static void ram_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    Ram *r = fuse_req_userdata(req);
    if (off < 0 || (uint64_t)off >= r->size) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > r->size - (uint64_t)off)
        size = (size_t)(r->size - (uint64_t)off);
    if (r->data) {
        fuse_reply_buf(req, (const char *)r->data + off, size);
        return;
    }
    static const char zeros[1 << 20];
    fuse_reply_buf(req, zeros, size < sizeof(zeros) ? size : sizeof(zeros));
}

static void ram_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    Ram *r = fuse_req_userdata(req);
    if (off < 0 || (uint64_t)off >= r->size) {
        fuse_reply_err(req, ENOSPC);
        return;
    }
    if (size > r->size - (uint64_t)off)
        size = (size_t)(r->size - (uint64_t)off);
    if (r->data)
        memcpy(r->data + off, buf, size);
    fuse_reply_write(req, size);
}

static void ram_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                          struct fuse_file_info *fi)
{
    Ram *r = fuse_req_userdata(req);
    if (mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) &&
        mode != (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    if (off < 0 || len <= 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if ((uint64_t)off < r->size && r->data) {
        uint64_t n = (uint64_t)len < r->size - (uint64_t)off ? (uint64_t)len : r->size - off;
        memset(r->data + off, 0, n);
    }
    fuse_reply_err(req, 0);
}

static void ram_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fuse_reply_err(req, 0);
}

static void ram_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    fuse_reply_err(req, 0);
}

static void ram_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                        struct fuse_file_info *fi)
{
    Ram *r = fuse_req_userdata(req);
    char buf[512];
    size_t used = 0;
    struct stat st;
    if (off < 1) {
        fill_stat(r, FILE_INODE, &st);
        used = fuse_add_direntry(req, buf, sizeof(buf) < size ? sizeof(buf) : size, NAME, &st, 1);
    }
    fuse_reply_buf(req, buf, used);
}

static void ram_statfs(fuse_req_t req, fuse_ino_t ino)
{
    Ram *r = fuse_req_userdata(req);
    struct statvfs sv;
    memset(&sv, 0, sizeof(sv));
    sv.f_bsize = sv.f_frsize = PAGE;
    sv.f_blocks = r->size / PAGE;
    sv.f_files = 2;
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ram_ops = {
    .lookup = ram_lookup,
    .getattr = ram_getattr,
    .open = ram_open,
    .read = ram_read,
    .write = ram_write,
    .flush = ram_ok,
    .release = ram_ok,
    .fsync = ram_fsync,
    .opendir = ram_ok,
    .readdir = ram_readdir,
    .releasedir = ram_ok,
    .statfs = ram_statfs,
    .fallocate = ram_fallocate,
};

static struct fuse_session *volatile active;
static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
    if (active)
        fuse_session_exit(active);
}

static PyObject *serve(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"mountpoint", "size", "threads", "clone_fd", "keep", NULL};
    const char *mountpoint;
    unsigned long long size;
    int threads = 4, clone_fd = 0, keep = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sK|ipp", kwlist, &mountpoint, &size, &threads,
                                     &clone_fd, &keep))
        return NULL;
    if (!size || size % PAGE || threads < 1)
        return PyErr_Format(PyExc_ValueError, "a size in whole pages and at least one thread");
    Ram ram = {.size = size, .data = NULL};
    if (keep) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return PyErr_SetFromErrno(PyExc_OSError);
        ram.data = p;
    }
    char *argv[] = {"zswapfs-ramfs", "-o", "default_permissions,fsname=zswapfs-ramfs", NULL};
    struct fuse_args fargs = FUSE_ARGS_INIT(3, argv);
    struct fuse_session *se = fuse_session_new(&fargs, &ram_ops, sizeof(ram_ops), &ram);
    int rc = -1;
    if (se && fuse_session_mount(se, mountpoint) == 0) {
        struct sigaction sa, old[3];
        int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        for (int i = 0; i < 3; i++)
            sigaction(sigs[i], &sa, &old[i]);
        active = se;
        Py_BEGIN_ALLOW_THREADS
        if (threads == 1) {
            rc = fuse_session_loop(se);
        } else {
            struct fuse_loop_config *cfg = fuse_loop_cfg_create();
            fuse_loop_cfg_set_max_threads(cfg, (unsigned int)threads);
            fuse_loop_cfg_set_clone_fd(cfg, (unsigned int)clone_fd);
            rc = fuse_session_loop_mt(se, cfg);
            fuse_loop_cfg_destroy(cfg);
        }
        fuse_session_unmount(se);
        Py_END_ALLOW_THREADS
        active = NULL;
        for (int i = 0; i < 3; i++)
            sigaction(sigs[i], &old[i], NULL);
    }
    if (se)
        fuse_session_destroy(se);
    if (ram.data)
        munmap(ram.data, size);
    if (rc < 0 && !got_signal)
        return PyErr_Format(PyExc_OSError, "serving %s failed", mountpoint);
    return PyLong_FromLong(got_signal);
}

static PyMethodDef methods[] = {
    {"serve", (PyCFunction)(void (*)(void))serve, METH_VARARGS | METH_KEYWORDS,
     "serve(mountpoint, size, threads=4, clone_fd=False, keep=True) -> signal"},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_ramfs", "The minimal C libfuse RAM file (zswapfs.lab.ramfs).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__ramfs(void) { return PyModule_Create(&moduledef); }
