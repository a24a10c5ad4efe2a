/* The keeper: what holds the state's pages in memory between the death of one server and the
 * takeover by the next (docs/restart.md, "Between two servers").
 *
 * The state lives in memfds (pool.h, store.h), and the kernel may page memfd pages out to swap
 * like any shared memory. While a server maps them they are locked (mlockall), but a process
 * that dies takes its mappings with it: from that instant until the next server has mapped
 * them again, nothing pins them. A reclaimer that takes unmapped shared pages (kswapd under
 * pressure, or DAMON's pageout scheme, which this machine runs on pages cold for a minute)
 * then writes them to the only swap there may be: the loop device on this very mount, whose
 * server is the one that is dead. The next server faults on such a page, waits for its
 * writeback, which waits for a server to answer: a deadlock in D state, swap and all.
 *
 * So a supervised server spawns a keeper: a process made with clone(CLONE_VM), sharing the
 * server's address space (the same mm, so every mapping the server has or will make, locked
 * as the server's are), that does nothing but wait. kill -9 of the server ends the server's
 * thread group, not the keeper's; the mm lives while the keeper does, and with it the locked
 * mappings of every page of the state. The keeper ends when the supervisor lets the old
 * server's channel go (poll sees the hang-up), which the supervisor does only once the next
 * server has taken over and locked every page of the state itself (store.c's _adopt), or when
 * the supervisor itself is gone (then nobody would take the mount over anyway). It is made
 * with CLONE_PARENT, so it is the supervisor's child, which reaps it.
 *
 * The keeper runs on a stack of its own inside the shared address space; it must not touch
 * anything the server's threads use: no libc call that writes errno or takes a lock (its
 * thread pointer is the calling thread's), only the raw system calls below, all signals
 * blocked (a signal handler of the server's would run in it otherwise). An OOM kill of the
 * server kills every process sharing its mm (the keeper too); the server's OOM score is
 * -1000 where it has the privilege (hardening.py), so the OOM killer does not choose it. */
#include "common.h"

#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define KEEPER_STACK (64 * 1024)

/* ThreadSanitizer takes a clone() for a fork and ends the process at its next new thread
 * ("starting new threads after multi-threaded fork"): no keeper in a TSan build */
#if defined(__SANITIZE_THREAD__)
#define HAVE_KEEPER 0
#elif defined(__x86_64__)
#define HAVE_KEEPER 1
static inline __attribute__((always_inline)) long raw_call(long n, long a, long b, long c, long d)
{
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(r)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return r;
}
#elif defined(__aarch64__)
#define HAVE_KEEPER 1
static inline __attribute__((always_inline)) long raw_call(long n, long a, long b, long c, long d)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}
#else
#define HAVE_KEEPER 0
#endif

#if HAVE_KEEPER
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

static const char keeper_name[16] = "zswapfs-keeper";

/* the keeper's whole life: drop every descriptor but the channel (it must not keep the FUSE
 * session, the backing file or a socket open), then wait for the channel's hang-up */
__attribute__((no_stack_protector, no_sanitize("address", "thread", "undefined")))
static int keeper_main(void *arg)
{
    long chan = (long)(intptr_t)arg;
    raw_call(SYS_prctl, PR_SET_NAME, (long)keeper_name, 0, 0);
    if (chan > 0 && raw_call(SYS_close_range, 0, chan - 1, 0, 0) < 0)
        for (long fd = 0; fd < chan; fd++)
            raw_call(SYS_close, fd, 0, 0, 0);
    if (raw_call(SYS_close_range, chan + 1, ~0u, 0, 0) < 0)
        for (long fd = chan + 1; fd < 4096; fd++)
            raw_call(SYS_close, fd, 0, 0, 0);
    struct pollfd p = {.fd = (int)chan, .events = 0};
    for (;;) {
        p.revents = 0;
        long r = raw_call(SYS_ppoll, (long)&p, 1, 0, 0);
        if (r > 0 || (r < 0 && r != -EINTR))
            break; /* a hang-up, an error, or a channel that is no descriptor at all */
    }
    return 0; /* clone's child path ends the process with a raw exit */
}
#endif

/* _spawn_keeper(channel_fd) -> pid: see above. OSError when the keeper cannot be made (or
 * this architecture has no keeper: ENOSYS). */
PyObject *py_spawn_keeper(PyObject *mod, PyObject *arg)
{
    int chan = PyLong_AsLong(arg);
    if (chan == -1 && PyErr_Occurred())
        return NULL;
#if HAVE_KEEPER
    if (chan < 0 || fcntl(chan, F_GETFD) < 0) {
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* never unmapped: the keeper may outlive every thread of this process */
    void *stack = mmap(NULL, KEEPER_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the keeper starts with all of them blocked */
    pid_t pid = clone(keeper_main, (char *)stack + KEEPER_STACK, CLONE_VM | CLONE_PARENT | SIGCHLD,
                      (void *)(intptr_t)chan);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        munmap(stack, KEEPER_STACK);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(pid);
#else
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#endif
}
