/* Arena: the memory pool pages live in (arena.py in C). Segments of SEG_PAGES pages, each a
 * memfd mapped (MAP_POPULATE) when its first page is taken; a lowest-first free map below the
 * high water mark; a freed page punched out of its memfd (the daemon is mlocked, so
 * MADV_DONTNEED is refused), except the last WARM_MAX freed, kept resident for the next
 * allocations; a segment with no page in use unmapped by arena_release_empty_segments. The
 * arena has no lock of its own: its pool calls it under the pool lock. */
#ifndef ZS_ARENA_H
#define ZS_ARENA_H

#include "common.h"

typedef struct {
    uint32_t max_pages, nseg;
    uint8_t **seg_addr;
    int *seg_fd;
    uint16_t *seg_used;
    uint8_t *free_map; /* 1 where a page below high_water is free */
    uint8_t *warm_map; /* 1 where a free page is still resident (arena.py's WARM_MAX) */
    uint32_t nfree, hint, high_water, pages_max, warm;
    long long segments_released;
    long long punch_errors;
} Arena;

int arena_init(Arena *a, uint32_t max_pages);
/* unmap and close every segment (the tables stay) */
void arena_close(Arena *a);
void arena_free_tables(Arena *a);
/* The lowest free page; with has_below, only one numbered below *below* (-1 when none).
 * -2: the arena is full or a segment could not be mapped (ArenaFull). */
int64_t arena_alloc_page(Arena *a, int has_below, uint32_t below);
void arena_free_page(Arena *a, uint32_t pn);
/* punch the warm pages, unmap the segments with no page in use; how many were unmapped */
long arena_release_empty_segments(Arena *a);

static inline uint32_t arena_pages_used(const Arena *a) { return a->high_water - a->nfree; }

static inline uint8_t *page_addr(const Arena *a, uint32_t pn)
{
    return a->seg_addr[pn >> SEG_SHIFT] + (size_t)(pn & SEG_MASK) * PAGE_SIZE;
}

static inline int arena_is_free(const Arena *a, uint32_t pn)
{
    return pn >= a->high_water || a->free_map[pn];
}

#endif
