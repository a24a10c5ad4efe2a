/* Arena: the memory pool pages live in (arena.py in C, where it differs: one memfd instead of
 * one a segment). The whole arena is one memfd of max_pages pages, mapped once without
 * reserving memory (MAP_NORESERVE; nothing is resident until touched); a segment of SEG_PAGES
 * pages is populated in one go (MADV_POPULATE_WRITE) when its first page is taken, where
 * arena.py maps a memfd of its own. A lowest-first free map below the high water mark; a freed
 * page punched out of the memfd (the daemon is mlocked, so MADV_DONTNEED is refused), except the
 * last WARM_MAX freed, kept resident for the next allocations; a segment with no page in use
 * punched whole by arena_release_empty_segments. One memfd is what a new process takes over
 * after a crash or an upgrade (docs/restart.md): it maps the same descriptor and rebuilds the
 * free map from the pages its pool still uses (arena_rebuild).
 *
 * The arena has no lock of its own: its pool calls it under the pool lock. Its free map and
 * counts are derived (rebuilt on takeover); only the pages' contents and pages_max (in the
 * pool's persistent header) outlive the process. */
#ifndef ZS_ARENA_H
#define ZS_ARENA_H

#include "common.h"

typedef struct {
    uint32_t max_pages, nseg;
    int fd;            /* the arena's memfd */
    uint8_t *base;     /* its mapping: page pn at base + pn * PAGE_SIZE */
    uint8_t *seg_live; /* 1 where a segment is populated (arena.py: mapped) */
    uint16_t *seg_used;
    uint8_t *free_map; /* 1 where a page below high_water is free */
    uint8_t *warm_map; /* 1 where a free page is still resident (arena.py's WARM_MAX) */
    uint32_t nfree, hint, high_water, pages_max, warm;
    long long segments_released;
    long long punch_errors;
    /* where pages_max and segments_released are kept for a takeover (the pool's header) */
    uint64_t *keep_pages_max;
    long long *keep_segments_released;
} Arena;

/* an arena of *max_pages* pages over memfd *fd* (its size checked), or a new memfd when fd is
 * -1; -1 with errno set when it cannot be had. The arena owns the descriptor it is given. */
int arena_init(Arena *a, uint32_t max_pages, int fd);
/* unmap and close the memfd (the tables stay); its pages live on while another descriptor of
 * the memfd is open (a supervisor's, docs/restart.md) */
void arena_close(Arena *a);
void arena_free_tables(Arena *a);
/* The lowest free page; with has_below, only one numbered below *below* (-1 when none).
 * -2: the arena is full or a segment could not be populated (ArenaFull). */
int64_t arena_alloc_page(Arena *a, int has_below, uint32_t below);
void arena_free_page(Arena *a, uint32_t pn);
/* punch the warm pages, and the segments with no page in use; how many segments were let go */
long arena_release_empty_segments(Arena *a);
/* after a takeover: the free map and counts from *used* (1 a page in use, max_pages bytes);
 * every page not in use is punched (a process that died may have left anything there) */
void arena_rebuild(Arena *a, const uint8_t *used);
/* every page memfd *fd* holds (its data extents: SEEK_DATA to SEEK_HOLE; holes stay holes)
 * faulted into its mapping at *base* (*bytes* long), so that this process, mlocked, locks each
 * one (keeper.c: what holds them before this). The bytes populated, or -1 with errno set. */
long long memfd_populate(void *base, size_t bytes, int fd);
/* segments populated now */
uint32_t arena_segments_live(const Arena *a);

static inline uint32_t arena_pages_used(const Arena *a) { return a->high_water - a->nfree; }

static inline uint8_t *page_addr(const Arena *a, uint32_t pn)
{
    return a->base + (size_t)pn * PAGE_SIZE;
}

static inline int arena_is_free(const Arena *a, uint32_t pn)
{
    return pn >= a->high_water || a->free_map[pn];
}

#endif
