/* Page workers: see workers.h. */
#include "workers.h"

static pthread_mutex_t workers_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t workers_cv = PTHREAD_COND_INITIALIZER; /* a batch was posted */
static pthread_cond_t batch_done_cv = PTHREAD_COND_INITIALIZER; /* a worker left its batch */
static Batch *posted;              /* the batch workers may join (workers_mu) */
static unsigned long long posted_gen; /* counts posted batches (workers_mu) */
/* workers_wanted: -1 until _set_workers says otherwise: then one for every core this process
 * may run on beyond the request thread's, at most 3 (native.py's default_workers) */
int workers_wanted = -1, batch_min_pages = 8;
static int workers_running;
static int batch_lead = 1; /* the requesting thread compresses too (0: only the workers do) */
static long long batches_parallel, batch_pages_helped; /* workers_mu */

/* take pages of *b* until none is left; the number taken */
static uint32_t batch_work(Batch *b)
{
    uint32_t done = 0;
    for (;;) {
        uint32_t i = __atomic_fetch_add(&b->next, PREP_CHUNK, __ATOMIC_RELAXED);
        if (i >= b->npages)
            return done;
        uint32_t end = i + PREP_CHUNK < b->npages ? i + PREP_CHUNK : b->npages;
        for (; i < end; i++, done++)
            b->lens[i] = prepare_page(b->codec, b->level, b->src + (size_t)i * PAGE_SIZE,
                                      b->out + (size_t)i * COMPRESS_BOUND, &b->words[i]);
    }
}

static void *worker_main(void *unused)
{
    unsigned long long seen = 0;
    pthread_mutex_lock(&workers_mu);
    for (;;) {
        while (!posted || posted_gen == seen)
            pthread_cond_wait(&workers_cv, &workers_mu);
        seen = posted_gen;
        Batch *b = posted;
        b->active++;
        pthread_mutex_unlock(&workers_mu);
        uint32_t done = batch_work(b);
        pthread_mutex_lock(&workers_mu);
        batch_pages_helped += done;
        if (--b->active == 0)
            pthread_cond_broadcast(&batch_done_cv);
    }
    return NULL;
}

/* workers_wanted resolved (workers_mu held) */
static int workers_resolved(void)
{
    if (workers_wanted < 0) {
        cpu_set_t cpus;
        int n = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        workers_wanted = n - 1 < 0 ? 0 : n - 1 > 3 ? 3 : n - 1;
    }
    return workers_wanted;
}

/* start the workers asked for and not running yet (workers_mu held) */
static void workers_start(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay with Python's threads */
    while (workers_running < workers_wanted) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        int rc = pthread_create(&t, &attr, worker_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            workers_wanted = workers_running; /* no more threads: work with those there are */
            break;
        }
        workers_running++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

pthread_key_t scratch_key;

void scratch_free(void *v) { free(v); }

/* this thread's scratch, made on first use; NULL when a request on this thread holds it */
Scratch *scratch_get(void)
{
    Scratch *sc = pthread_getspecific(scratch_key);
    if (!sc) {
        sc = calloc(1, sizeof(*sc));
        if (!sc || pthread_setspecific(scratch_key, sc) != 0) {
            free(sc);
            return NULL;
        }
    }
    return sc->busy ? NULL : sc;
}

/* Classify and compress *npages* whole pages at *src* into *sc*, with the workers' help when
 * they are free (GIL released). */
void batch_prepare(Scratch *sc, const uint8_t *src, uint32_t npages, int codec, int level)
{
    Batch b = {.src = src, .npages = npages, .codec = codec, .level = level, .lens = sc->lens,
               .words = sc->words, .out = sc->out};
    int shared = 0, lead = 1;
    pthread_mutex_lock(&workers_mu);
    if (workers_running < workers_resolved())
        workers_start();
    if (!posted && workers_running) {
        posted = &b;
        posted_gen++;
        shared = 1;
        lead = batch_lead; /* read once: _set_workers may change it meanwhile */
        pthread_cond_broadcast(&workers_cv);
    }
    pthread_mutex_unlock(&workers_mu);
    if (lead)
        batch_work(&b);
    if (!shared)
        return;
    pthread_mutex_lock(&workers_mu);
    while (!lead && __atomic_load_n(&b.next, __ATOMIC_RELAXED) < npages)
        pthread_cond_wait(&batch_done_cv, &workers_mu); /* the tests' mode: workers do it all */
    posted = NULL; /* no worker joins from now on; wait for those inside to leave */
    while (b.active)
        pthread_cond_wait(&batch_done_cv, &workers_mu);
    batches_parallel++;
    pthread_mutex_unlock(&workers_mu);
}

/* _set_workers(n, min_pages, lead=True): n page workers (0: every page on the requesting
 * thread) for write requests of at least min_pages whole pages; more threads start on the next
 * such request, and surplus ones stay idle. lead=False leaves a posted batch's pages to the
 * workers alone (for the tests: which thread compresses a page is otherwise up to timing). */
PyObject *py_set_workers(PyObject *mod, PyObject *args)
{
    int n, min_pages, lead = 1;
    if (!PyArg_ParseTuple(args, "ii|p", &n, &min_pages, &lead))
        return NULL;
    if (n < 0 || n > 64 || min_pages < 2) {
        PyErr_SetString(PyExc_ValueError, "workers: 0..64, min_pages: at least 2");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&workers_mu);
    workers_wanted = n;
    batch_min_pages = min_pages;
    batch_lead = lead;
    pthread_mutex_unlock(&workers_mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* _workers() -> dict: the page workers' settings and what they did */
PyObject *py_workers_stats(PyObject *mod, PyObject *unused)
{
    long long wanted, running, min_pages, parallel, helped;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&workers_mu);
    wanted = workers_resolved();
    running = workers_running;
    min_pages = batch_min_pages;
    parallel = batches_parallel;
    helped = batch_pages_helped;
    pthread_mutex_unlock(&workers_mu);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("{sLsLsLsLsLsi}", "workers", wanted, "running", running, "min_pages",
                         min_pages, "batches", parallel, "pages_by_workers", helped, "batch_max",
                         BATCH_MAX);
}
