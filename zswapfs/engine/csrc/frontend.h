/* Frontend: the mount served in C. A libfuse low-level session over the system libfuse3, its
 * requests read and answered by libfuse's own multi-threaded loop (fuse_session_loop_mt; the
 * most worker threads and clone_fd are settings). READ, WRITE, FALLOCATE, FLUSH and FSYNC on
 * the image call the store's request cores (store.h) directly, with no Python and no GIL; the
 * rare requests (lookup, getattr, setattr, open and release, readdir, statfs, the stats and
 * control files) take the GIL and call files.py's ImageFiles, the code the pyfuse3 frontend
 * (fs.py, the reference) calls for every request, so both answer with the same bytes and errno.
 *
 * Threads and the GIL: a worker that needs Python gets a Python thread state of its own the
 * first time and keeps it until it ends (so an exception set by a store callback survives until
 * the handler deals with it); serve() lets the GIL go for as long as the loop runs, and
 * SIGTERM, SIGINT or SIGHUP (unblocked in that thread only) end the loop.
 *
 * Locking: nothing here is shared between workers but the store (its own locks) and a few
 * counters kept with atomics. */
#ifndef ZS_FRONTEND_H
#define ZS_FRONTEND_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "store.h"

/* the largest write and read the kernel sends the native frontend: each worker holds a buffer of
 * each (libfuse's request buffer, the reply buffer), resident once touched in the mlocked
 * daemon, so 1 MiB (libfuse's default) would cost 2 MiB a worker; at 256 KiB a 1 MiB write is
 * four requests, which the page workers and the kernel's queue keep as fast
 * (docs/performance.md) */
#define FRONTEND_MAX_IO (256 * 1024)

typedef struct {
    PyObject_HEAD
    StoreObject *store; /* the engine the image requests go to (a reference held) */
    PyObject *files;    /* files.py's ImageFiles (a reference held) */
    struct fuse_session *se;
    char *mountpoint;   /* while mounted */
    uint64_t size;      /* the image's bytes */
    int threads;        /* most worker threads */
    int clone_fd;       /* a /dev/fuse descriptor of its own for each worker */
    int serving;        /* serve() runs (atomic) */
    int stopped;        /* stop() ended the loop, not a signal */
    pthread_t loop_thread; /* serve()'s, while serving */
    PyObject *init_request; /* the kernel's FUSE_INIT as it was read (bytes), for a takeover */
    /* figures (atomic) */
    long long last_write_ns; /* the last write to the image, for its mtime */
    long long c_requests;    /* image requests answered in C */
    long long py_requests;   /* requests that called Python */
} FrontendObject;

extern PyTypeObject FrontendType;
/* the thread keys frontend.c uses (module.c calls it at import); -1 when none could be made */
int frontend_init(void);

#endif
