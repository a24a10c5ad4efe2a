/* Page workers: a write request of many whole pages (a 128 KiB or 1 MiB write) has its pages
 * classified and compressed on more than one core before the request loop places them in
 * order. The workers are plain pthreads shared by every store, started on the first such
 * request; the requesting thread works through the same pages alongside them (both take
 * pages from one atomic counter), so a request never waits for a worker to wake up, and a
 * busy or missing worker (another request holds them; a forked child, which has none) only
 * means the requesting thread does every page itself. Only the codec and the same-filled
 * check run here: placement, the index and every counter stay with the request loop, in page
 * order, so a batched request ends exactly as the page-by-page loop would.                    */
#ifndef ZS_WORKERS_H
#define ZS_WORKERS_H

#include "codec.h"

enum { PREP_SAME = -2, PREP_FAILED = -1 };
#define PREP_CHUNK 2 /* pages a worker takes at a time */
#define BATCH_MAX 64 /* most pages in one batch: a 256 KiB request (frontend.c's MAX_WRITE), a
                      * bigger one is prepared in several; each thread's Scratch is its size */

typedef struct {
    const uint8_t *src;   /* the request's whole pages, back to back */
    uint32_t npages;
    int codec, level;
    int32_t *lens;        /* per page: compressed length, PREP_SAME or PREP_FAILED */
    uint64_t *words;      /* per page: its first word (the fill word of a same-filled page) */
    uint8_t *out;         /* per page: COMPRESS_BOUND bytes of codec output */
    uint32_t next;        /* the next page to take (atomic) */
    int active;           /* workers inside this batch (workers_mu) */
} Batch;

/* per-thread room for one batch's results (BATCH_MAX pages) */
typedef struct {
    int32_t lens[BATCH_MAX];
    uint64_t words[BATCH_MAX];
    uint8_t out[BATCH_MAX * COMPRESS_BOUND];
    int busy; /* a request on this thread is using it (a callback's nested request must not) */
} Scratch;

/* settings read by the request loop (atomic loads; _set_workers writes them) */
extern int workers_wanted, batch_min_pages;
extern pthread_key_t scratch_key; /* this thread's Scratch (module.c creates the key) */
void scratch_free(void *v);
Scratch *scratch_get(void);
void batch_prepare(Scratch *sc, const uint8_t *src, uint32_t npages, int codec, int level);
PyObject *py_set_workers(PyObject *mod, PyObject *args);
PyObject *py_workers_stats(PyObject *mod, PyObject *unused);

/* same-filled: one 8-byte word repeated, i.e. the page equals itself shifted by a word (one
 * memcmp; the page may sit at any alignment); *word* gets its first word either way */
static inline int same_filled(const uint8_t *page, uint64_t *word)
{
    memcpy(word, page, 8);
    return memcmp(page, page + 8, PAGE_SIZE - 8) == 0;
}

static inline int prepare_page(int codec, int level, const uint8_t *page, uint8_t *out,
                               uint64_t *word)
{
    return same_filled(page, word) ? PREP_SAME : compress_page(codec, level, page, out);
}

#endif
