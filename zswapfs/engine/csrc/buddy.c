/* Buddy pools: pools/buddy.py (zbud, z3fold) in C. The page records live in arrays indexed by
 * pool page number, as there; a location word is pn << 15 | buddy << 13 | length.            */
#include "pool.h"

static inline int chunks_for(size_t size) { return (int)((size + CHUNK - 1) / CHUNK); }

int bd_track_pages(PoolObject *p)
{
    size_t old = p->bd_len, n = page_table_len(p, old);
    if (!n)
        return 0;
    for (int b = 0; b < 3; b++)
        if (resize_zeroed((void **)&p->bd_chunks[b], old, n, 1) ||
            resize_zeroed((void **)&p->bd_handle[b], old, n, 4))
            return -1;
    if (resize_zeroed((void **)&p->bd_free_at, old, n, 1) ||
        resize_zeroed((void **)&p->bd_prev, old, n, 4) ||
        resize_zeroed((void **)&p->bd_next, old, n, 4))
        return -1;
    p->bd_len = n;
    return 0;
}

/* first chunk of buddy *bud* of page *pn* */
static inline int bd_first_chunk(const PoolObject *p, uint32_t pn, int bud)
{
    if (bud == BUD_FIRST)
        return 0;
    if (bud == BUD_LAST)
        return NCHUNKS - p->bd_chunks[BUD_LAST][pn];
    return p->bd_mid[pn];
}

static inline uint8_t *bd_addr(const PoolObject *p, uint64_t loc)
{
    uint32_t pn = (uint32_t)(loc >> 15);
    return page_addr(&p->arena, pn) + bd_first_chunk(p, pn, (int)(loc >> 13) & 3) * CHUNK;
}

/* chunks an allocation could use in page *pn* under the placement rules */
static int bd_free_chunks(const PoolObject *p, uint32_t pn)
{
    int f = p->bd_chunks[BUD_FIRST][pn], m = p->bd_chunks[BUD_MIDDLE][pn];
    int l = p->bd_chunks[BUD_LAST][pn];
    if (p->kind == POOL_ZBUD)
        return f && l ? 0 : NCHUNKS - f - l;
    if (f && m && l)
        return 0;
    if (m) {
        int ms = p->bd_mid[pn];
        int before = f ? 0 : ms, after = l ? 0 : NCHUNKS - ms - m;
        return before > after ? before : after;
    }
    return NCHUNKS - f - l;
}

/* which buddy of page *pn* takes an object of *n* chunks (the caller checked it fits) */
static int bd_choose(const PoolObject *p, uint32_t pn, int n)
{
    if (!p->bd_chunks[BUD_FIRST][pn]) {
        if (p->kind == POOL_Z3FOLD && p->bd_chunks[BUD_MIDDLE][pn] && n > p->bd_mid[pn])
            return BUD_LAST;
        return BUD_FIRST;
    }
    if (!p->bd_chunks[BUD_LAST][pn])
        return BUD_LAST;
    return BUD_MIDDLE;
}

static void bd_list_del(PoolObject *p, uint32_t pn)
{
    int k = p->bd_free_at[pn];
    if (k < 0)
        return;
    int32_t prev = p->bd_prev[pn], nxt = p->bd_next[pn];
    if (prev != NONE)
        p->bd_next[prev] = nxt;
    else
        p->bd_heads[k] = nxt;
    if (nxt != NONE)
        p->bd_prev[nxt] = prev;
    p->bd_free_at[pn] = NONE;
    p->bd_listed_pages--;
    p->bd_listed_chunks -= NCHUNKS - k;
}

/* (re)file page *pn* at the head of the unbuddied list of its free chunks, or on none */
static void bd_list_add(PoolObject *p, uint32_t pn)
{
    bd_list_del(p, pn);
    int k = bd_free_chunks(p, pn);
    if (k == 0)
        return;
    int32_t head = p->bd_heads[k];
    p->bd_prev[pn] = NONE;
    p->bd_next[pn] = head;
    if (head != NONE)
        p->bd_prev[head] = (int32_t)pn;
    p->bd_heads[k] = (int32_t)pn;
    p->bd_free_at[pn] = (int8_t)k;
    p->bd_listed_pages++;
    p->bd_listed_chunks += NCHUNKS - k;
}

static inline int bd_taken(const int32_t *taken, int ntaken, int32_t pn)
{
    for (int i = 0; i < ntaken; i++)
        if (taken[i] == pn)
            return 1;
    return 0;
}

/* the first page on the tightest unbuddied list that fits *n* chunks, skipping *taken* */
static int32_t bd_find_page(const PoolObject *p, int n, const int32_t *taken, int ntaken)
{
    for (int k = n; k <= NCHUNKS; k++) {
        int32_t pn = p->bd_heads[k];
        while (pn != NONE && bd_taken(taken, ntaken, pn))
            pn = p->bd_next[pn];
        if (pn != NONE)
            return pn;
    }
    return NONE;
}

static int32_t bd_new_page(PoolObject *p)
{
    int64_t pn = arena_alloc_page(&p->arena, 0, 0);
    if (pn < 0)
        return NONE;
    if (bd_track_pages(p) != 0) {
        arena_free_page(&p->arena, (uint32_t)pn);
        return NONE;
    }
    for (int b = 0; b < 3; b++)
        p->bd_chunks[b][pn] = 0;
    p->bd_mid[pn] = 0;
    p->bd_free_at[pn] = NONE;
    return (int32_t)pn;
}

/* claim a buddy of *pn* for an object of *len* bytes; its location word */
static uint64_t bd_put(PoolObject *p, uint32_t pn, uint64_t h, size_t len)
{
    int n = chunks_for(len), bud = bd_choose(p, pn, n);
    p->bd_chunks[bud][pn] = (uint8_t)n;
    p->bd_handle[bud][pn] = (uint32_t)h;
    if (bud == BUD_MIDDLE)
        p->bd_mid[pn] = p->bd_chunks[BUD_FIRST][pn];
    bd_list_add(p, pn);
    return (uint64_t)pn << 15 | (uint64_t)bud << 13 | len;
}

uint64_t bd_store_locked(PoolObject *p, const uint8_t *data, size_t len)
{
    uint64_t h = handle_new(p, 0);
    if (!h)
        return 0;
    int32_t pn = bd_find_page(p, chunks_for(len), NULL, 0);
    if (pn == NONE && (pn = bd_new_page(p)) == NONE) {
        handle_release(p, h);
        return 0;
    }
    uint64_t loc = bd_put(p, (uint32_t)pn, h, len);
    p->table[h] = loc;
    memcpy(bd_addr(p, loc), data, len);
    p->bytes_stored += len;
    return h;
}

/* z3fold's in-page compaction: the middle object moves to chunk *start* as buddy *to*. The
 * old and new places may overlap, so the object is saved in the region's journal first (I4):
 * a takeover that finds the journal valid puts it back where the old location word says. */
static void bd_move_middle(PoolObject *p, uint32_t pn, int start, int to)
{
    int n = p->bd_chunks[BUD_MIDDLE][pn];
    uint32_t h = p->bd_handle[BUD_MIDDLE][pn];
    uint64_t len = p->table[h] & LEN_MASK;
    const uint8_t *src = page_addr(&p->arena, pn) + p->bd_mid[pn] * CHUNK;
    MoveJournal *j = &p->hdr->move;
    j->handle = h;
    j->old_loc = p->table[h];
    j->pn = pn;
    j->old_mid = p->bd_mid[pn];
    j->len = (uint32_t)len;
    memcpy(j->bytes, src, len);
    __atomic_store_n(&j->valid, 1, __ATOMIC_RELEASE);
    p->bd_chunks[BUD_MIDDLE][pn] = 0;
    p->bd_chunks[to][pn] = (uint8_t)n;
    p->bd_handle[to][pn] = h;
    if (to == BUD_MIDDLE)
        p->bd_mid[pn] = (uint8_t)start;
    uint64_t loc = (uint64_t)pn << 15 | (uint64_t)to << 13 | len;
    crash_point("z3fold.journaled");
    memmove(bd_addr(p, loc), src, len); /* within one page: the ranges may overlap */
    crash_point("z3fold.moved");
    loc_commit(&p->table[h], loc);
    __atomic_store_n(&j->valid, 0, __ATOMIC_RELEASE);
    p->hdr->objects_moved++;
}

static void bd_compact_page(PoolObject *p, uint32_t pn)
{
    int f = p->bd_chunks[BUD_FIRST][pn], m = p->bd_chunks[BUD_MIDDLE][pn];
    int l = p->bd_chunks[BUD_LAST][pn];
    if (!m)
        return;
    int ms = p->bd_mid[pn];
    if (!f && !l)
        bd_move_middle(p, pn, 0, BUD_FIRST);
    else if (f && !l && ms - f >= BIG_GAP)
        bd_move_middle(p, pn, f, BUD_MIDDLE);
    else if (l && !f && NCHUNKS - l - (ms + m) >= BIG_GAP)
        bd_move_middle(p, pn, NCHUNKS - l - m, BUD_MIDDLE);
}

int bd_free_locked(PoolObject *p, uint64_t h)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    handle_release(p, h);
    int len = (int)(loc & LEN_MASK);
    p->bytes_stored -= len;
    uint32_t pn = (uint32_t)(loc >> 15);
    p->bd_chunks[(loc >> 13) & 3][pn] = 0;
    if (!(p->bd_chunks[BUD_FIRST][pn] || p->bd_chunks[BUD_MIDDLE][pn] ||
          p->bd_chunks[BUD_LAST][pn])) {
        bd_list_del(p, pn);
        arena_free_page(&p->arena, pn);
        return len;
    }
    if (p->kind == POOL_Z3FOLD)
        bd_compact_page(p, pn);
    bd_list_add(p, pn);
    return len;
}

int bd_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst)
{
    uint64_t loc;
    if (handle_get(p, h, &loc) != 0)
        return -1;
    size_t len = loc & LEN_MASK;
    memcpy(dst, bd_addr(p, loc), len);
    return (int)len;
}

/* Move every object of the emptiest page (three at most) into other pages with room, each to
 * a different page, or nothing when one has no home: 1 when a page was freed, else -1. */
int bd_compact_step_locked(PoolObject *p)
{
    int32_t src = NONE;
    for (int k = NCHUNKS; k > 0 && src == NONE; k--)
        src = p->bd_heads[k];
    if (src == NONE)
        return -1;
    int buds[3], nb = 0;
    for (int b = BUD_FIRST; b <= BUD_LAST; b++)
        if (p->bd_chunks[b][src])
            buds[nb++] = b;
    /* biggest first; equal sizes keep first, middle, last order (Python's stable sort) */
    for (int i = 1; i < nb; i++)
        for (int j = i; j > 0 && p->bd_chunks[buds[j - 1]][src] < p->bd_chunks[buds[j]][src]; j--) {
            int t = buds[j];
            buds[j] = buds[j - 1];
            buds[j - 1] = t;
        }
    int32_t taken[4] = {src}, dst[3];
    for (int i = 0; i < nb; i++) {
        dst[i] = bd_find_page(p, p->bd_chunks[buds[i]][src], taken, i + 1);
        if (dst[i] == NONE)
            return -1;
        taken[i + 1] = dst[i];
    }
    for (int i = 0; i < nb; i++) {
        int b = buds[i];
        uint32_t h = p->bd_handle[b][src];
        size_t len = p->table[h] & LEN_MASK;
        const uint8_t *from = bd_addr(p, (uint64_t)src << 15 | (uint64_t)b << 13);
        uint64_t loc = bd_put(p, (uint32_t)dst[i], h, len);
        memcpy(bd_addr(p, loc), from, len);
        crash_point("bd.compact.copied");
        loc_commit(&p->table[h], loc); /* I2: after the copy; the old page let go after */
        p->bd_chunks[b][src] = 0;
        p->hdr->objects_moved++;
    }
    bd_list_del(p, (uint32_t)src);
    arena_free_page(&p->arena, (uint32_t)src);
    p->hdr->pages_compacted++;
    return 1;
}

int bd_migrate_page_locked(PoolObject *p, uint32_t pn)
{
    Arena *a = &p->arena;
    int64_t nw = migrate_copy(p, pn);
    if (nw < 0)
        return 0;
    /* I2: the copy's middle start is in place before any location word names the copy; each
     * word then switches on its own, the old page keeping a copy until it is let go */
    p->bd_mid[nw] = p->bd_mid[pn];
    for (int b = BUD_FIRST; b <= BUD_LAST; b++) {
        p->bd_chunks[b][nw] = p->bd_chunks[b][pn];
        p->bd_handle[b][nw] = p->bd_handle[b][pn];
        if (p->bd_chunks[b][pn]) {
            uint32_t h = p->bd_handle[b][pn];
            loc_commit(&p->table[h],
                       (uint64_t)nw << 15 | (uint64_t)b << 13 | (p->table[h] & LEN_MASK));
            crash_point("bd.migrate.one");
        }
    }
    p->bd_free_at[nw] = NONE;
    bd_list_del(p, pn);
    bd_list_add(p, (uint32_t)nw);
    for (int b = BUD_FIRST; b <= BUD_LAST; b++)
        p->bd_chunks[b][pn] = 0;
    crash_point("bd.migrate.switched");
    arena_free_page(a, pn);
    p->hdr->migrated_pages++;
    return 1;
}

/* pool pages a perfect repacking of the pages with room would free (O(1), from the counters) */
long long bd_freeable_pages(const PoolObject *p)
{
    long long n = p->bd_listed_pages - (p->bd_listed_chunks + NCHUNKS - 1) / NCHUNKS - 1;
    return n > 0 ? n : 0;
}

/* rebuild after a takeover ----------------------------------------------------------------- */

/* the buddy records of every page from the live handles (pool_rebuild has freed the others):
 * each names its page, buddy and length, the middle's start is the region's bd_mid; then every
 * page in use is filed on its unbuddied list. Pages in use are marked in *used*. */
int bd_rebuild(PoolObject *p, uint8_t *used)
{
    uint32_t max_pn = 0;
    for (uint64_t h = 3; h < p->tlen; h++) {
        uint64_t loc = p->table[h];
        if (loc & FREE_TAG)
            continue;
        uint64_t pn = loc >> 15;
        if (pn >= p->arena.max_pages)
            return -1;
        max_pn = (uint32_t)pn > max_pn ? (uint32_t)pn : max_pn;
    }
    p->arena.high_water = max_pn + 1;
    if (bd_track_pages(p) != 0)
        return -1;
    for (size_t pn = 0; pn < p->bd_len; pn++) {
        for (int b = 0; b < 3; b++) {
            p->bd_chunks[b][pn] = 0;
            p->bd_handle[b][pn] = 0;
        }
        p->bd_free_at[pn] = NONE;
        p->bd_prev[pn] = p->bd_next[pn] = NONE;
    }
    for (int k = 0; k <= NCHUNKS; k++)
        p->bd_heads[k] = NONE;
    p->bd_listed_pages = p->bd_listed_chunks = 0;
    for (uint64_t h = 3; h < p->tlen; h++) {
        uint64_t loc = p->table[h];
        if (loc & FREE_TAG)
            continue;
        uint32_t pn = (uint32_t)(loc >> 15);
        int bud = (int)(loc >> 13) & 3;
        if (bud > BUD_LAST || p->bd_chunks[bud][pn])
            return -1; /* two objects in one buddy */
        p->bd_chunks[bud][pn] = (uint8_t)chunks_for(loc & LEN_MASK);
        p->bd_handle[bud][pn] = (uint32_t)h;
        used[pn] = 1;
    }
    for (uint32_t pn = 0; pn <= max_pn; pn++)
        if (used[pn])
            bd_list_add(p, pn);
    return 0;
}
