/* zsmalloc: size classes, zspages and fullness groups (pools/zsmalloc.py in C; the design and
 * the handle encoding are described there). A location word is z << 24 | idx << 13 | length
 * for an object in slot idx of zspage z, HUGE_LOC | pn << 13 | length for a raw page. */
#include "pool.h"

/* classes --------------------------------------------------------------------------------- */

static int best_pages_per_zspage(int size, int max_chain)
{
    int best = 1, best_used = -1;
    for (int pages = 1; pages <= max_chain; pages++) {
        int span = pages * PAGE_SIZE;
        int used = (span - span % size) * 100 / span;
        if (used > best_used) {
            best = pages;
            best_used = used;
        }
    }
    return best;
}

int build_classes(PoolObject *p)
{
    p->classes = calloc(NSIZES, sizeof(SizeClass));
    if (!p->classes)
        return -1;
    p->nclasses = 0;
    p->huge_class_size = PAGE_SIZE;
    SizeClass *prev = NULL;
    for (int i = NSIZES - 1; i >= 0; i--) {
        int size = MIN_SIZE + i * DELTA;
        int pages = best_pages_per_zspage(size, p->max_chain);
        int objs = pages * PAGE_SIZE / size;
        if (objs == 1 && pages == 1)
            p->huge_class_size = size;
        if (prev && prev->pages == pages && prev->objs == objs) {
            p->lookup[i] = prev->index;
            continue;
        }
        prev = &p->classes[p->nclasses];
        prev->index = p->nclasses++;
        prev->size = size;
        prev->pages = pages;
        prev->objs = objs;
        prev->huge = objs == 1;
        p->lookup[i] = prev->index;
    }
    p->heads = malloc(sizeof(int32_t) * NGROUPS * p->nclasses);
    if (!p->heads)
        return -1;
    for (int i = 0; i < NGROUPS * p->nclasses; i++)
        p->heads[i] = NONE;
    return 0;
}

static inline SizeClass *class_for(PoolObject *p, size_t size)
{
    size_t slot = size + HDR;
    if (slot >= (size_t)p->huge_class_size)
        return &p->classes[0];
    if (slot < MIN_SIZE)
        slot = MIN_SIZE;
    return &p->classes[p->lookup[(slot - MIN_SIZE + DELTA - 1) / DELTA]];
}

/* zspage lists ---------------------------------------------------------------------------- */

static void zs_link(PoolObject *p, int32_t z, int c, int g)
{
    int slot = c * NGROUPS + g;
    int32_t head = p->heads[slot];
    p->zs_prev[z] = NONE;
    p->zs_next[z] = head;
    if (head != NONE)
        p->zs_prev[head] = z;
    p->heads[slot] = z;
    p->zs_group[z] = (int8_t)g;
}

static void zs_unlink(PoolObject *p, int32_t z)
{
    int32_t prev = p->zs_prev[z], nxt = p->zs_next[z];
    if (prev != NONE)
        p->zs_next[prev] = nxt;
    else
        p->heads[p->zs_class[z] * NGROUPS + p->zs_group[z]] = nxt;
    if (nxt != NONE)
        p->zs_prev[nxt] = prev;
}

static void zs_regroup(PoolObject *p, int32_t z, SizeClass *cls)
{
    int inuse = p->zs_inuse[z], g;
    if (inuse == cls->objs)
        g = GROUP_FULL;
    else if (inuse == 0)
        g = 0;
    else
        g = 1 + inuse * 10 / cls->objs;
    if (g != p->zs_group[z]) {
        zs_unlink(p, z);
        zs_link(p, z, cls->index, g);
    }
}

static int32_t zs_fullest(PoolObject *p, SizeClass *cls, int32_t exclude)
{
    int base = cls->index * NGROUPS;
    for (int g = GROUP_FULL - 1; g > 0; g--) {
        int32_t z = p->heads[base + g];
        if (z == exclude && z != NONE)
            z = p->zs_next[z];
        if (z != NONE)
            return z;
    }
    return NONE;
}

static int32_t zs_emptiest(PoolObject *p, SizeClass *cls)
{
    int base = cls->index * NGROUPS;
    for (int g = 1; g < GROUP_FULL; g++) {
        int32_t z = p->heads[base + g];
        if (z != NONE)
            return z;
    }
    return NONE;
}

/* zspage life ----------------------------------------------------------------------------- */

/* the per-pool-page tables cover every page handed out: page_owner grows here (page_next is
 * in the region, whole), page_len follows the reference's growth rule for metadata_bytes */
int track_pages(PoolObject *p)
{
    size_t n = page_table_len(p, p->page_len);
    if (!n)
        return 0;
    if (resize_zeroed((void **)&p->page_owner, p->page_len, n, 4))
        return -1;
    p->page_len = n;
    return 0;
}

static int32_t zs_new(PoolObject *p, SizeClass *cls)
{
    uint32_t pages[16];
    for (int i = 0; i < cls->pages; i++) {
        int64_t pn = arena_alloc_page(&p->arena, 0, 0);
        if (pn < 0) {
            for (int j = 0; j < i; j++)
                arena_free_page(&p->arena, pages[j]);
            return NONE;
        }
        pages[i] = (uint32_t)pn;
    }
    int32_t z;
    if (p->unused_count) {
        z = (int32_t)p->zs_unused[--p->unused_count];
    } else {
        size_t n = p->zs_count + 1, c;
        if (n > p->hdr->max_zspages)
            goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_inuse, &c, n, 2)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_bump, &c, n, 2)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_free, &c, n, 4)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_prev, &c, n, 4)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_next, &c, n, 4)) goto nomem;
        c = p->zs_cap;
        if (grow((void **)&p->zs_group, &c, n, 1)) goto nomem;
        p->zs_cap = c;
        z = (int32_t)p->zs_count++;
        __atomic_store_n(&p->hdr->zs_count, p->zs_count, __ATOMIC_RELEASE);
        p->zs_prev[z] = NONE;
        p->zs_next[z] = NONE;
        p->zs_group[z] = 0;
    }
    /* zspage z and its pages are named by no handle yet (I1) */
    p->zs_class[z] = (uint16_t)cls->index;
    p->zs_inuse[z] = 0;
    p->zs_bump[z] = 0;
    p->zs_free[z] = NONE;
    p->zs_first[z] = pages[0];
    if (track_pages(p) != 0)
        goto nomem_z;
    for (int i = 0; i < cls->pages; i++) {
        p->page_owner[pages[i]] = (uint32_t)z;
        p->page_next[pages[i]] = i + 1 < cls->pages ? pages[i + 1] : 0;
    }
    zs_link(p, z, cls->index, 0);
    cls->zspages++;
    return z;
nomem_z:
    if (grow((void **)&p->zs_unused, &p->unused_cap, p->unused_count + 1, 4) == 0)
        p->zs_unused[p->unused_count++] = (uint32_t)z; /* else the id is lost, nothing worse */
nomem:
    for (int j = 0; j < cls->pages; j++)
        arena_free_page(&p->arena, pages[j]);
    return NONE;
}

static int zs_release(PoolObject *p, int32_t z, SizeClass *cls)
{
    if (grow((void **)&p->zs_unused, &p->unused_cap, p->unused_count + 1, 4) != 0)
        return -1;
    zs_unlink(p, z);
    p->zs_group[z] = NONE;
    uint32_t pn = p->zs_first[z];
    for (int i = 0; i < cls->pages; i++) {
        uint32_t nxt = p->page_next[pn];
        arena_free_page(&p->arena, pn);
        pn = nxt;
    }
    p->zs_unused[p->unused_count++] = (uint32_t)z;
    cls->zspages--;
    return 0;
}

static inline uint32_t zs_page_at(const PoolObject *p, int32_t z, uint32_t k)
{
    uint32_t pn = p->zs_first[z];
    while (k--)
        pn = p->page_next[pn];
    return pn;
}

/* bytes in a zspage ----------------------------------------------------------------------- */

static void zs_copy_out(const PoolObject *p, int32_t z, uint32_t start, uint8_t *dst, size_t len)
{
    uint32_t pn = zs_page_at(p, z, start >> 12);
    uint32_t off = start & (PAGE_SIZE - 1), first = PAGE_SIZE - off;
    if (len <= first) {
        memcpy(dst, page_addr(&p->arena, pn) + off, len);
        return;
    }
    memcpy(dst, page_addr(&p->arena, pn) + off, first);
    memcpy(dst + first, page_addr(&p->arena, p->page_next[pn]), len - first);
}

static void zs_copy_in(PoolObject *p, int32_t z, uint32_t start, const uint8_t *src, size_t len)
{
    uint32_t pn = zs_page_at(p, z, start >> 12);
    uint32_t off = start & (PAGE_SIZE - 1), first = PAGE_SIZE - off;
    if (len <= first) {
        memcpy(page_addr(&p->arena, pn) + off, src, len);
        return;
    }
    memcpy(page_addr(&p->arena, pn) + off, src, first);
    memcpy(page_addr(&p->arena, p->page_next[pn]), src + first, len - first);
}

static inline uint32_t zs_header(const PoolObject *p, int32_t z, uint32_t start)
{
    uint8_t b[HDR];
    zs_copy_out(p, z, start, b, HDR);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static inline void put_le32(uint8_t *b, uint32_t v)
{
    b[0] = v & 0xff;
    b[1] = (v >> 8) & 0xff;
    b[2] = (v >> 16) & 0xff;
    b[3] = (v >> 24) & 0xff;
}

static inline void zs_set_header(PoolObject *p, int32_t z, uint32_t start, uint32_t v)
{
    uint8_t b[HDR];
    put_le32(b, v);
    zs_copy_in(p, z, start, b, HDR);
}

/* slot allocation (pool lock held) -------------------------------------------------------- */

static int zs_take_slot(PoolObject *p, SizeClass *cls, int32_t z)
{
    int idx = p->zs_free[z];
    if (idx != NONE) {
        p->zs_free[z] = (int32_t)(zs_header(p, z, (uint32_t)idx * cls->size) >> 1) - 1;
    } else {
        idx = p->zs_bump[z];
        p->zs_bump[z] = (uint16_t)(idx + 1);
    }
    p->zs_inuse[z]++;
    cls->inuse++;
    zs_regroup(p, z, cls);
    return idx;
}

static int zs_drop_slot(PoolObject *p, SizeClass *cls, int32_t z, int idx)
{
    cls->inuse--;
    int inuse = p->zs_inuse[z] - 1;
    p->zs_inuse[z] = (uint16_t)inuse;
    if (inuse == 0)
        return zs_release(p, z, cls);
    zs_set_header(p, z, (uint32_t)idx * cls->size, (uint32_t)(p->zs_free[z] + 1) << 1);
    p->zs_free[z] = idx;
    zs_regroup(p, z, cls);
    return 0;
}

/* zsmalloc's side of the pool interface (pool lock held) ---------------------------------- */

uint64_t zs_store_locked(PoolObject *p, const uint8_t *data, size_t len)
{
    SizeClass *cls = class_for(p, len);
    if (cls->huge) {
        int64_t pn = arena_alloc_page(&p->arena, 0, 0);
        if (pn < 0)
            return 0;
        uint64_t h = handle_new(p, HUGE_LOC | (uint64_t)pn << 13 | len);
        if (!h || track_pages(p) != 0) {
            if (h)
                handle_release(p, h);
            arena_free_page(&p->arena, (uint32_t)pn);
            return 0;
        }
        p->page_owner[pn] = HUGE_OWNER | (uint32_t)h;
        cls->zspages++;
        cls->inuse++;
        p->bytes_stored += len;
        memcpy(page_addr(&p->arena, (uint32_t)pn), data, len);
        return h;
    }
    uint64_t h = handle_new(p, 0);
    if (!h)
        return 0;
    int32_t z = zs_fullest(p, cls, NONE);
    if (z == NONE) {
        z = zs_new(p, cls);
        if (z == NONE) {
            handle_release(p, h);
            return 0;
        }
    }
    int idx = zs_take_slot(p, cls, z);
    uint32_t start = (uint32_t)idx * cls->size;
    zs_set_header(p, z, start, (uint32_t)(h << 1 | 1));
    zs_copy_in(p, z, start + HDR, data, len);
    p->table[h] = (uint64_t)z << 24 | (uint64_t)idx << 13 | len;
    p->bytes_stored += len;
    return h;
}

int zs_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    size_t len = loc & LEN_MASK;
    if (loc & HUGE_LOC) {
        memcpy(dst, page_addr(&p->arena, (uint32_t)((loc >> 13) & PN_MASK)), len);
        return (int)len;
    }
    int32_t z = (int32_t)(loc >> 24);
    const SizeClass *cls = &p->classes[p->zs_class[z]];
    zs_copy_out(p, z, (uint32_t)((loc >> 13) & IDX_MASK) * cls->size + HDR, dst, len);
    return (int)len;
}

int zs_free_locked(PoolObject *p, uint64_t h)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    int len = (int)(loc & LEN_MASK);
    if (loc & HUGE_LOC) {
        arena_free_page(&p->arena, (uint32_t)((loc >> 13) & PN_MASK));
        p->classes[0].zspages--;
        p->classes[0].inuse--;
    } else {
        int32_t z = (int32_t)(loc >> 24);
        if (zs_drop_slot(p, &p->classes[p->zs_class[z]], z, (int)((loc >> 13) & IDX_MASK)))
            return -1;
    }
    handle_release(p, h);
    p->bytes_stored -= len;
    return len;
}

static int compact_class_step(PoolObject *p, SizeClass *cls, int budget)
{
    if (freeable_zspages(cls) == 0)
        return -1;
    int32_t src = zs_emptiest(p, cls);
    if (src == NONE)
        return -1;
    uint8_t data[PAGE_SIZE];
    int bump = p->zs_bump[src];
    for (int idx = 0; idx < bump; idx++) {
        if (budget == 0)
            return 0;
        uint32_t start = (uint32_t)idx * cls->size;
        uint32_t hdr = zs_header(p, src, start);
        if (!(hdr & 1))
            continue;
        int32_t dst = zs_fullest(p, cls, src);
        if (dst == NONE)
            return -1;
        uint64_t h = hdr >> 1;
        size_t len = p->table[h] & LEN_MASK;
        zs_copy_out(p, src, start + HDR, data, len);
        int nidx = zs_take_slot(p, cls, dst);
        uint32_t nstart = (uint32_t)nidx * cls->size;
        zs_set_header(p, dst, nstart, (uint32_t)(h << 1 | 1));
        zs_copy_in(p, dst, nstart + HDR, data, len);
        /* I2: the copy is whole before the location word names it, the old slot let go after */
        crash_point("zs.compact.copied");
        loc_commit(&p->table[h], (uint64_t)dst << 24 | (uint64_t)nidx << 13 | len);
        crash_point("zs.compact.switched");
        p->hdr->objects_moved++;
        budget--;
        int released = p->zs_inuse[src] == 1;
        if (zs_drop_slot(p, cls, src, idx))
            return -1;
        if (released) {
            p->hdr->pages_compacted += cls->pages;
            return cls->pages;
        }
    }
    return 0;
}

int zs_compact_step_locked(PoolObject *p, int budget)
{
    int n = p->nclasses;
    for (int i = 0; i < n; i++) {
        SizeClass *cls = &p->classes[(p->compact_cursor + i) % n];
        int step = compact_class_step(p, cls, budget);
        if (step >= 0) {
            p->compact_cursor = cls->index;
            return step;
        }
    }
    return -1;
}

int zs_migrate_page_locked(PoolObject *p, uint32_t pn)
{
    Arena *a = &p->arena;
    int64_t nw = migrate_copy(p, pn);
    if (nw < 0)
        return 0;
    uint32_t owner = p->page_owner[pn];
    if (owner & HUGE_OWNER) {
        uint64_t h = owner & ~HUGE_OWNER;
        uint64_t len = p->table[h] & LEN_MASK;
        crash_point("zs.migrate.copied");
        loc_commit(&p->table[h], HUGE_LOC | (uint64_t)nw << 13 | len);
    } else {
        /* I2: the copy links on to the rest of the chain before the chain links to it */
        int32_t z = (int32_t)owner;
        p->page_next[nw] = p->page_next[pn];
        if (p->zs_first[z] == pn) {
            __atomic_store_n(&p->zs_first[z], (uint32_t)nw, __ATOMIC_RELEASE);
        } else {
            uint32_t prev = p->zs_first[z];
            while (p->page_next[prev] != pn)
                prev = p->page_next[prev];
            __atomic_store_n(&p->page_next[prev], (uint32_t)nw, __ATOMIC_RELEASE);
        }
    }
    crash_point("zs.migrate.switched");
    p->page_owner[nw] = owner;
    arena_free_page(a, pn);
    p->hdr->migrated_pages++;
    return 1;
}

/* rebuild after a takeover ----------------------------------------------------------------- */

/* zsmalloc's derived state from the live handles (pool_rebuild has freed the others): every
 * zspage a live handle names gets its pages (walked from zs_first along page_next), its use
 * count, its bump and a free list through the headers of every slot below the bump that no
 * live handle names (whatever a dead process left there: a ghost header would be moved by the
 * next compaction); every other zspage id is unused. Pages in use are marked in *used*. */
int zs_rebuild(PoolObject *p, uint8_t *used)
{
    size_t nz = p->zs_count, c = 0;
    if (nz && (grow((void **)&p->zs_inuse, &c, nz, 2) ||
               (c = 0, grow((void **)&p->zs_bump, &c, nz, 2)) ||
               (c = 0, grow((void **)&p->zs_free, &c, nz, 4)) ||
               (c = 0, grow((void **)&p->zs_prev, &c, nz, 4)) ||
               (c = 0, grow((void **)&p->zs_next, &c, nz, 4)) ||
               (c = 0, grow((void **)&p->zs_group, &c, nz, 1))))
        return -1;
    p->zs_cap = c ? c : p->zs_cap;
    for (size_t z = 0; z < nz; z++) {
        p->zs_inuse[z] = p->zs_bump[z] = 0;
        p->zs_free[z] = p->zs_prev[z] = p->zs_next[z] = NONE;
        p->zs_group[z] = NONE;
    }
    for (int i = 0; i < NGROUPS * p->nclasses; i++)
        p->heads[i] = NONE;
    for (int i = 0; i < p->nclasses; i++)
        p->classes[i].zspages = p->classes[i].inuse = 0;
    /* first pass: use counts and bumps; huge pages */
    uint32_t max_pn = 0;
    for (uint64_t h = 3; h < p->tlen; h++) {
        uint64_t loc = p->table[h];
        if (loc & FREE_TAG)
            continue;
        if (loc & HUGE_LOC) {
            uint32_t pn = (uint32_t)((loc >> 13) & PN_MASK);
            if (pn >= p->arena.max_pages || used[pn])
                return -1;
            used[pn] = 1;
            max_pn = pn > max_pn ? pn : max_pn;
            p->classes[0].zspages++;
            p->classes[0].inuse++;
            continue;
        }
        uint64_t z = loc >> 24;
        uint32_t idx = (uint32_t)((loc >> 13) & IDX_MASK);
        if (z >= nz || p->zs_class[z] >= p->nclasses ||
            idx >= (uint32_t)p->classes[p->zs_class[z]].objs)
            return -1;
        p->zs_inuse[z]++;
        if (idx + 1 > p->zs_bump[z])
            p->zs_bump[z] = (uint16_t)(idx + 1);
    }
    /* the zspages in use: their pages, then their free lists */
    p->unused_count = 0;
    for (size_t z = nz; z-- > 0;) {
        if (!p->zs_inuse[z]) {
            if (grow((void **)&p->zs_unused, &p->unused_cap, p->unused_count + 1, 4))
                return -1;
            p->zs_unused[p->unused_count++] = (uint32_t)z;
            continue;
        }
        SizeClass *cls = &p->classes[p->zs_class[z]];
        uint32_t pn = p->zs_first[z];
        for (int k = 0; k < cls->pages; k++) {
            if (pn >= p->arena.max_pages || used[pn])
                return -1;
            used[pn] = 1;
            max_pn = pn > max_pn ? pn : max_pn;
            pn = p->page_next[pn];
        }
        cls->zspages++;
        cls->inuse += p->zs_inuse[z];
    }
    /* page tables cover every page in use (the arena's high water is not set yet) */
    p->arena.high_water = max_pn + 1;
    if (track_pages(p) != 0)
        return -1;
    for (size_t z = 0; z < nz; z++) {
        if (!p->zs_inuse[z])
            continue;
        SizeClass *cls = &p->classes[p->zs_class[z]];
        uint32_t pn = p->zs_first[z];
        for (int k = 0; k < cls->pages; k++) {
            p->page_owner[pn] = (uint32_t)z;
            pn = p->page_next[pn];
        }
        /* every slot below the bump: free, unless a live handle's header says it is its own */
        for (int idx = p->zs_bump[z] - 1; idx >= 0; idx--) {
            uint32_t hdr = zs_header(p, (int32_t)z, (uint32_t)idx * cls->size);
            uint64_t h = hdr >> 1;
            if ((hdr & 1) && h >= 3 && h < p->tlen && !(p->table[h] & FREE_TAG) &&
                !(p->table[h] & HUGE_LOC) && (p->table[h] >> 24) == z &&
                ((p->table[h] >> 13) & IDX_MASK) == (uint64_t)idx)
                continue;
            zs_set_header(p, (int32_t)z, (uint32_t)idx * cls->size,
                          (uint32_t)(p->zs_free[z] + 1) << 1);
            p->zs_free[z] = idx;
        }
        p->zs_group[z] = 0;
        zs_link(p, (int32_t)z, cls->index, 0);
        zs_regroup(p, (int32_t)z, cls);
    }
    for (uint64_t h = 3; h < p->tlen; h++) {
        uint64_t loc = p->table[h];
        if (!(loc & FREE_TAG) && (loc & HUGE_LOC))
            p->page_owner[(loc >> 13) & PN_MASK] = HUGE_OWNER | (uint32_t)h;
    }
    /* a live object whose own header does not name it: the region contradicts itself */
    for (uint64_t h = 3; h < p->tlen; h++) {
        uint64_t loc = p->table[h];
        if ((loc & FREE_TAG) || (loc & HUGE_LOC))
            continue;
        int32_t z = (int32_t)(loc >> 24);
        uint32_t start = (uint32_t)((loc >> 13) & IDX_MASK) * p->classes[p->zs_class[z]].size;
        if (zs_header(p, z, start) != (uint32_t)(h << 1 | 1))
            return -1;
    }
    return 0;
}
