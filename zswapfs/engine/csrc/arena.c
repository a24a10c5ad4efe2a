/* Arena: see arena.h. */
#include "arena.h"

#include <sys/stat.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#ifndef SEEK_DATA
#define SEEK_DATA 3
#define SEEK_HOLE 4
#endif

int arena_init(Arena *a, uint32_t max_pages, int fd)
{
    memset(a, 0, sizeof(*a));
    a->fd = -1;
    a->max_pages = max_pages;
    a->nseg = (max_pages + SEG_PAGES - 1) >> SEG_SHIFT;
    size_t bytes = (size_t)a->nseg * SEG_BYTES;
    a->seg_live = calloc(a->nseg, 1);
    a->seg_used = calloc(a->nseg, sizeof(*a->seg_used));
    a->free_map = calloc(max_pages, 1);
    a->warm_map = calloc(max_pages, 1);
    if (!a->seg_live || !a->seg_used || !a->free_map || !a->warm_map) {
        if (fd >= 0)
            close(fd);
        errno = ENOMEM;
        return -1;
    }
    if (fd < 0) {
        fd = memfd_create("zswapfs-arena", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
            int err = errno;
            if (fd >= 0)
                close(fd);
            errno = err;
            return -1;
        }
    } else {
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size != bytes) {
            close(fd);
            errno = EINVAL;
            return -1;
        }
    }
    void *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    a->fd = fd;
    a->base = base;
    return 0;
}

void arena_close(Arena *a)
{
    if (a->base) {
        munmap(a->base, (size_t)a->nseg * SEG_BYTES);
        a->base = NULL;
    }
    if (a->fd >= 0) {
        close(a->fd);
        a->fd = -1;
    }
}

void arena_free_tables(Arena *a)
{
    arena_close(a);
    free(a->seg_live);
    free(a->seg_used);
    free(a->free_map);
    free(a->warm_map);
    memset(a, 0, sizeof(*a));
    a->fd = -1;
}

static int64_t arena_lowest_free(const Arena *a, uint32_t below)
{
    uint32_t end = below < a->high_water ? below : a->high_water;
    if (!a->nfree || a->hint >= end)
        return -1;
    const uint8_t *p = memchr(a->free_map + a->hint, 1, end - a->hint);
    return p ? (int64_t)(p - a->free_map) : -1;
}

/* populated at once, as the daemon's mlockall(MCL_FUTURE) would fault it in anyway: one
 * batched fault for the segment instead of one a page on the write path (holes punched later
 * stay free); a kernel without MADV_POPULATE_WRITE faults the pages in as they are touched */
static int arena_populate(Arena *a, uint32_t seg)
{
    if (!a->base)
        return -1;
    madvise(a->base + (size_t)seg * SEG_BYTES, SEG_BYTES, MADV_POPULATE_WRITE);
    a->seg_live[seg] = 1;
    return 0;
}

/* The lowest free page; with has_below, only one numbered below *below* (-1 when none).
 * -2: the arena is full or a segment could not be populated (ArenaFull). */
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
    if (!a->seg_live[seg] && arena_populate(a, seg) != 0)
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
    if (used > a->pages_max) {
        a->pages_max = used;
        if (a->keep_pages_max)
            *a->keep_pages_max = used;
    }
    return pn;
}

static void arena_punch_range(Arena *a, uint32_t pn, uint32_t count)
{
    if (fallocate(a->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)pn * PAGE_SIZE,
                  (off_t)count * PAGE_SIZE) != 0)
        a->punch_errors++;
}

void arena_free_page(Arena *a, uint32_t pn)
{
    uint32_t seg = pn >> SEG_SHIFT;
    if (a->warm < WARM_MAX) {
        a->warm_map[pn] = 1;
        a->warm++;
    } else {
        arena_punch_range(a, pn, 1);
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
        arena_punch_range(a, (uint32_t)(w - a->warm_map), 1);
    }
    long released = 0;
    for (uint32_t s = 0; s < a->nseg; s++) {
        if (a->seg_live[s] && a->seg_used[s] == 0) {
            arena_punch_range(a, s << SEG_SHIFT, SEG_PAGES);
            a->seg_live[s] = 0;
            released++;
        }
    }
    a->segments_released += released;
    if (a->keep_segments_released)
        *a->keep_segments_released = a->segments_released;
    return released;
}

void arena_rebuild(Arena *a, const uint8_t *used)
{
    memset(a->free_map, 0, a->max_pages);
    memset(a->warm_map, 0, a->max_pages);
    memset(a->seg_used, 0, a->nseg * sizeof(*a->seg_used));
    memset(a->seg_live, 0, a->nseg);
    a->warm = a->nfree = a->hint = a->high_water = 0;
    for (uint32_t pn = 0; pn < a->max_pages; pn++) {
        if (used[pn]) {
            a->high_water = pn + 1;
            a->seg_used[pn >> SEG_SHIFT]++;
            a->seg_live[pn >> SEG_SHIFT] = 1;
        }
    }
    for (uint32_t pn = 0; pn < a->high_water; pn++) {
        if (!used[pn]) {
            a->free_map[pn] = 1;
            a->nfree++;
        }
    }
    /* every page not in use punched, in runs (one call a run) */
    for (uint32_t pn = 0; pn < a->max_pages;) {
        if (used[pn]) {
            pn++;
            continue;
        }
        uint32_t end = pn;
        while (end < a->max_pages && !used[end])
            end++;
        arena_punch_range(a, pn, end - pn);
        pn = end;
    }
    uint32_t in_use = arena_pages_used(a);
    if (in_use > a->pages_max)
        a->pages_max = in_use;
}

uint32_t arena_segments_live(const Arena *a)
{
    uint32_t n = 0;
    for (uint32_t s = 0; s < a->nseg; s++)
        n += a->seg_live[s];
    return n;
}

long long memfd_populate(void *base, size_t bytes, int fd)
{
    long long done = 0;
    off_t end = (off_t)bytes, at = 0;
    while (at < end) {
        off_t data = lseek(fd, at, SEEK_DATA);
        if (data < 0)
            return errno == ENXIO ? done : -1; /* ENXIO: no data past *at* */
        if (data >= end)
            break;
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0)
            return -1;
        if (hole > end)
            hole = end;
        if (madvise((char *)base + data, (size_t)(hole - data), MADV_POPULATE_WRITE) != 0) {
            if (errno != EINVAL)
                return -1;
            for (off_t o = data; o < hole; o += PAGE_SIZE) /* a kernel before 5.14 */
                (void)*(volatile char *)((char *)base + o);
        }
        done += hole - data;
        at = hole;
    }
    return done;
}
