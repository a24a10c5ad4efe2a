/* Lock: see lock.h. */
#include "lock.h"

/* GIL held (a Python entry point): wait for *l* with the GIL let go */
void lock_wait(LockObject *l)
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
int lock_enter(LockObject *l)
{
    if (lock_held(l)) {
        PyErr_SetString(PyExc_RuntimeError, "deadlock: this thread already holds the lock");
        return -1;
    }
    lock_wait(l);
    return 0;
}

/* for the Python methods that expect *l* held by the caller: -1 with RuntimeError if not */
int require_held(LockObject *l, const char *what)
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

PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zswapfs.engine._native.Lock",
    .tp_basicsize = sizeof(LockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mutex shared by compiled and Python code, with an owner; waits let the GIL go.",
    .tp_new = Lock_new,
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_methods = Lock_methods,
};

/* a new Pool or Store (*type*) with its Lock made, stored at *lock_offset* */
PyObject *new_with_lock(PyTypeObject *type, size_t lock_offset)
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
