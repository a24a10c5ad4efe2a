/* Arena: see arena.h. */
#include "arena.h"

int arena_init(Arena *a, uint32_t max_pages)
{
    memset(a, 0, sizeof(*a));
    a->max_pages = max_pages;
    a->nseg = (max_pages + SEG_PAGES - 1) >> SEG_SHIFT;
    a->seg_addr = calloc(a->nseg, sizeof(*a->seg_addr));
    a->seg_fd = malloc(a->nseg * sizeof(*a->seg_fd));
    a->seg_used = calloc(a->nseg, sizeof(*a->seg_used));
    a->free_map = calloc(max_pages, 1);
    a->warm_map = calloc(max_pages, 1);
    if (!a->seg_addr || !a->seg_fd || !a->seg_used || !a->free_map || !a->warm_map)
        return -1;
    for (uint32_t i = 0; i < a->nseg; i++)
        a->seg_fd[i] = -1;
    return 0;
}

void arena_close(Arena *a)
{
    if (a->seg_addr) {
        for (uint32_t s = 0; s < a->nseg; s++) {
            if (a->seg_addr[s]) {
                munmap(a->seg_addr[s], SEG_BYTES);
                close(a->seg_fd[s]);
                a->seg_addr[s] = NULL;
                a->seg_fd[s] = -1;
            }
        }
    }
}

void arena_free_tables(Arena *a)
{
    arena_close(a);
    free(a->seg_addr);
    free(a->seg_fd);
    free(a->seg_used);
    free(a->free_map);
    free(a->warm_map);
    memset(a, 0, sizeof(*a));
}

static int64_t arena_lowest_free(const Arena *a, uint32_t below)
{
    uint32_t end = below < a->high_water ? below : a->high_water;
    if (!a->nfree || a->hint >= end)
        return -1;
    const uint8_t *p = memchr(a->free_map + a->hint, 1, end - a->hint);
    return p ? (int64_t)(p - a->free_map) : -1;
}

static int arena_map(Arena *a, uint32_t seg)
{
    int fd = memfd_create("zswapfs-seg", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, SEG_BYTES) != 0) {
        close(fd);
        return -1;
    }
    /* populated at once, as the daemon's mlockall(MCL_FUTURE) does anyway: one batched fault
     * for the segment instead of one a page on the write path (holes punched later stay free) */
    void *addr = mmap(NULL, SEG_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (addr == MAP_FAILED) {
        close(fd);
        return -1;
    }
    a->seg_addr[seg] = addr;
    a->seg_fd[seg] = fd;
    return 0;
}

/* The lowest free page; with has_below, only one numbered below *below* (-1 when none).
 * -2: the arena is full or a segment could not be mapped (ArenaFull). */
int64_t arena_alloc_page(Arena *a, int has_below, uint32_t below)
{
    int64_t pn = arena_lowest_free(a, has_below ? below : a->high_water);
    int fresh = 0;
    if (pn < 0) {
        if (has_below)
            return -1;
        if (a->high_water >= a->max_pages)
            return -2;
        pn = a->high_water;
        fresh = 1;
    }
    uint32_t seg = (uint32_t)pn >> SEG_SHIFT;
    if (!a->seg_addr[seg] && arena_map(a, seg) != 0)
        return -2; /* nothing was taken yet */
    if (a->warm_map[pn]) {
        a->warm_map[pn] = 0;
        a->warm--;
    }
    if (fresh) {
        a->high_water++;
    } else {
        a->free_map[pn] = 0;
        a->nfree--;
        a->hint = (uint32_t)pn + 1;
    }
    a->seg_used[seg]++;
    uint32_t used = arena_pages_used(a);
    if (used > a->pages_max)
        a->pages_max = used;
    return pn;
}

static void arena_punch(Arena *a, uint32_t pn)
{
    if (fallocate(a->seg_fd[pn >> SEG_SHIFT], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)(pn & SEG_MASK) * PAGE_SIZE, PAGE_SIZE) != 0)
        a->punch_errors++;
}

void arena_free_page(Arena *a, uint32_t pn)
{
    uint32_t seg = pn >> SEG_SHIFT;
    if (a->warm < WARM_MAX) {
        a->warm_map[pn] = 1;
        a->warm++;
    } else {
        arena_punch(a, pn);
    }
    a->seg_used[seg]--;
    if (pn == a->high_water - 1) {
        a->high_water--;
        while (a->high_water && a->free_map[a->high_water - 1]) {
            a->high_water--;
            a->free_map[a->high_water] = 0;
            a->nfree--;
        }
    } else {
        a->free_map[pn] = 1;
        a->nfree++;
        if (pn < a->hint)
            a->hint = pn;
    }
    if (a->hint > a->high_water)
        a->hint = a->high_water;
}

long arena_release_empty_segments(Arena *a)
{
    for (uint8_t *w = a->warm_map; a->warm && (w = memchr(w, 1, a->max_pages - (w - a->warm_map)));
         w++) {
        *w = 0;
        a->warm--;
        arena_punch(a, (uint32_t)(w - a->warm_map));
    }
    long released = 0;
    for (uint32_t s = 0; s < a->nseg; s++) {
        if (a->seg_addr[s] && a->seg_used[s] == 0) {
            munmap(a->seg_addr[s], SEG_BYTES);
            close(a->seg_fd[s]);
            a->seg_addr[s] = NULL;
            a->seg_fd[s] = -1;
            released++;
        }
    }
    a->segments_released += released;
    return released;
}
