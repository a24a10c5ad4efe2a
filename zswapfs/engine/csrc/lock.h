/* Lock: a pthread mutex with an owner. C takes it with lock_take/lock_give (GIL released) or
 * lock_wait (GIL held: lets the GIL go while it waits); Python holds it with `with lock:`.
 * The owner is what makes the rules checkable: lock_held(l) says whether the calling thread
 * holds it, the Python methods that expect the store lock held raise RuntimeError when it is
 * not, C functions that expect it assert it in debug builds (ZS_DEBUG: make sanitize), a
 * release by a thread that does not hold it is refused, and a blocking acquire by the thread
 * that already holds it raises instead of deadlocking.                                         */
#ifndef ZS_LOCK_H
#define ZS_LOCK_H

#include "common.h"

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

void lock_wait(LockObject *l);
int lock_enter(LockObject *l);
int require_held(LockObject *l, const char *what);
PyObject *new_with_lock(PyTypeObject *type, size_t lock_offset);

extern PyTypeObject LockType;

#endif
