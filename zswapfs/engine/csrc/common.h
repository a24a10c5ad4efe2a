/* What every source file of the compiled engine shares: the system headers, the page size and
 * the constants of the Python reference (store.py's entry codes and meta bits, zsmalloc's
 * geometry), and the exception classes Python hands in. See module.c for the map of the files. */
#ifndef ZS_COMMON_H
#define ZS_COMMON_H

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

/* Crash points (tests, docs/restart.md): the instants between the steps of the invariants in
 * pool.h and store.h. With ZSWAPFS_CRASH_AT="name:N" in the environment at import, the Nth
 * pass through crash_point("name") kills the process (SIGKILL, as kill -9 does), so a test
 * can take the state over from exactly there. Unarmed, a crash point is one predictable
 * branch. */
/* keeper.c: _spawn_keeper(channel_fd) */
PyObject *py_spawn_keeper(PyObject *mod, PyObject *arg);

extern int crash_armed;
void crash_hit(const char *name);
static inline void crash_point(const char *name)
{
    if (__builtin_expect(crash_armed, 0))
        crash_hit(name);
}

/* the exception classes Python hands in (_set_errors; module.c owns them) */
extern PyObject *PoolFullError;       /* pools.PoolFull */
extern PyObject *StorageFailureError; /* store.StorageFailure */
extern PyObject *StoreErrorBase;      /* store.StoreError */

#endif
