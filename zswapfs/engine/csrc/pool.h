/* Pool: a handle table (indirect handles: an object can move, its handle does not; free
 * handles chained through their own entries), an arena, and one placement strategy chosen at
 * set-up: zsmalloc's size classes and zspages (zsmalloc.c) or the zbud/z3fold page records and
 * unbuddied lists (buddy.c). pools/__init__.py, zsmalloc.py and buddy.py are the reference.
 *
 * Locking: everything here is guarded by the pool's own Lock (the pool lock); the *_locked
 * functions expect it held (ASSERT_HELD). The store takes it inside its own lock.
 *
 * What outlives the process (docs/restart.md). The pool's state is two memfds a supervisor
 * keeps: the arena (the pages) and the pool's persistent region (PoolHeader and the arrays
 * after it). The region holds only what cannot be derived: the handle table (where each object
 * lies), each zspage's class and first page and the page chains (zs_class, zs_first,
 * page_next), each buddy page's middle start (bd_mid), a journal of a z3fold middle move in
 * flight, and the event counters. Everything else (the free handle list, fullness groups and
 * free slots of zspages, buddy records and unbuddied lists, the arena's free map) is private
 * and rebuilt by pool_rebuild from the live handles the store names. For that, at any instant
 * a process can die the region must say where every object the store names lies:
 *   I1 an object is written into space nobody names (a free slot, a fresh page) before the
 *      one store that names it (its handle's location word; the index, for a new handle);
 *   I2 a move (compaction, migration) copies first, then switches the location word (or the
 *      chain link: zs_first / page_next; bd_mid of the new page set before any handle names
 *      it), and only then lets the old place go;
 *   I3 what is let go (a slot's free header, a page punched) is named by nothing any more;
 *   I4 a move inside one page (z3fold's middle object, whose old and new places overlap)
 *      saves the object in the journal first, so a takeover can undo it.
 * A crash can leave garbage behind (a handle or zspage nobody names, a page with a copy):
 * the rebuild lets it go. */
#ifndef ZS_POOL_H
#define ZS_POOL_H

#include "arena.h"
#include "lock.h"

typedef struct {
    int index, size, pages, objs, huge;
    long long zspages, inuse;
} SizeClass;

/* the pool strategies (pools/__init__.py's POOL_NAMES) */
enum { POOL_ZSMALLOC = 0, POOL_ZBUD = 1, POOL_Z3FOLD = 2 };
/* zbud and z3fold geometry: see pools/buddy.py */
#define CHUNK 64
#define NCHUNKS (PAGE_SIZE / CHUNK)
#define BIG_GAP 3
enum { BUD_FIRST = 0, BUD_MIDDLE = 1, BUD_LAST = 2 };

#define POOL_MAGIC "zswpool\0"
/* the layout of the persistent region: a new format number for any change a process of
 * another build could misread (it then refuses to take the state over) */
#define POOL_FORMAT 1
#define POOL_HEADER_BYTES 16384

/* z3fold's in-page move of a middle object, in flight: saved before the move starts, so that
 * a takeover finding it valid puts the object back where its old location word says (I4) */
typedef struct {
    uint64_t valid; /* set last, cleared when the move is committed */
    uint64_t handle, old_loc;
    uint32_t pn, old_mid, len, pad;
    uint8_t bytes[PAGE_SIZE];
} MoveJournal;

typedef struct {
    char magic[8];
    uint32_t format, kind, max_chain, pad;
    uint64_t max_pages, max_handles, max_zspages, bytes;
    uint64_t off_table, off_zs_first, off_zs_class, off_page_next, off_bd_mid;
    uint64_t tlen;      /* handle ids handed out: table[0, tlen) */
    uint64_t zs_count;  /* zspage ids handed out */
    uint64_t pages_max; /* the arena's peak (mem_used_max) */
    uint64_t arena_dev, arena_ino; /* the arena memfd's identity (a foreign one is refused) */
    long long pages_compacted, objects_moved, migrated_pages, segments_released;
    MoveJournal move;
} PoolHeader;

typedef struct {
    PyObject_HEAD
    LockObject *lock;
    int ready, closed;
    int max_chain;
    int needs_rebuild; /* taken over: pool_rebuild must run before anything else */
    Arena arena;
    /* the persistent region (see above): its memfd, mapping and header */
    int state_fd;
    PoolHeader *hdr;
    /* handle table (in the region) */
    uint64_t *table;
    size_t tlen;
    uint64_t free_head;
    long long live;
    /* classes */
    SizeClass *classes;
    int nclasses;
    int lookup[NSIZES];
    int huge_class_size;
    int32_t *heads;
    /* per zspage: zs_class and zs_first in the region, the rest derived */
    uint16_t *zs_class, *zs_inuse, *zs_bump;
    int32_t *zs_free, *zs_prev, *zs_next;
    uint32_t *zs_first;
    int8_t *zs_group;
    size_t zs_count, zs_cap;
    uint32_t *zs_unused;
    size_t unused_count, unused_cap;
    /* per pool page: page_next in the region, page_owner derived */
    uint32_t *page_next, *page_owner;
    size_t page_len;
    int compact_cursor;
    long long bytes_stored; /* the event counters live in the region's header */
    /* zbud and z3fold (kind): per pool page, pools/buddy.py's arrays (bd_mid in the region) */
    int kind;
    uint8_t *bd_chunks[3], *bd_mid;
    uint32_t *bd_handle[3];
    int8_t *bd_free_at;
    int32_t *bd_prev, *bd_next;
    size_t bd_len;
    int32_t bd_heads[NCHUNKS + 1];
    long long bd_listed_pages, bd_listed_chunks;
} PoolObject;

/* shared by both strategies (pool.c) */
int grow(void **p, size_t *cap, size_t need, size_t item);
int resize_zeroed(void **arr, size_t old, size_t n, size_t item);
size_t page_table_len(const PoolObject *p, size_t len);
uint64_t handle_new(PoolObject *p, uint64_t loc);
/* a location word stored where a takeover sees it whole and after what it names (I1, I2) */
static inline void loc_commit(uint64_t *slot, uint64_t loc)
{
    __atomic_store_n(slot, loc, __ATOMIC_RELEASE);
}
/* after a takeover: the pool rebuilt from the handles *live* names (1 a live handle, tlen
 * bytes; NULL: every handle the table holds); -1 with a Python exception set (GIL held) when
 * the region contradicts itself */
int pool_rebuild(PoolObject *p, const uint8_t *live);
int64_t migrate_copy(PoolObject *p, uint32_t pn);
int pool_check(PoolObject *p);
PyObject *not_live(unsigned long long h);

static inline int handle_get(const PoolObject *p, uint64_t h, uint64_t *loc)
{
    if (h >= p->tlen || (p->table[h] & FREE_TAG))
        return -1;
    *loc = p->table[h];
    return 0;
}

static inline void handle_release(PoolObject *p, uint64_t h)
{
    p->table[h] = FREE_TAG | p->free_head;
    p->free_head = h;
    p->live--;
}

/* zsmalloc.c */
int build_classes(PoolObject *p);
int zs_rebuild(PoolObject *p, uint8_t *used); /* pages in use marked in *used* */
int track_pages(PoolObject *p);
uint64_t zs_store_locked(PoolObject *p, const uint8_t *data, size_t len);
int zs_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst);
int zs_free_locked(PoolObject *p, uint64_t h);
int zs_compact_step_locked(PoolObject *p, int budget);
int zs_migrate_page_locked(PoolObject *p, uint32_t pn);
static inline int zs_raw_threshold(const PoolObject *p) { return p->huge_class_size - HDR; }
static inline long long freeable_zspages(const SizeClass *cls)
{
    if (cls->huge)
        return 0;
    return (cls->zspages * cls->objs - cls->inuse) / cls->objs;
}

/* buddy.c */
int bd_track_pages(PoolObject *p);
int bd_rebuild(PoolObject *p, uint8_t *used);
uint64_t bd_store_locked(PoolObject *p, const uint8_t *data, size_t len);
int bd_free_locked(PoolObject *p, uint64_t h);
int bd_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst);
int bd_compact_step_locked(PoolObject *p);
int bd_migrate_page_locked(PoolObject *p, uint32_t pn);
long long bd_freeable_pages(const PoolObject *p);

/* Place *len* bytes (1..4096); the new handle, or 0 when the pool has no room (PoolFull). */
static inline uint64_t pool_store_locked(PoolObject *p, const uint8_t *data, size_t len)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_store_locked(p, data, len) : bd_store_locked(p, data, len);
}

/* Copy the object out into dst (room for 4096); its length, or -1 if the handle is not live. */
static inline int pool_read_locked(const PoolObject *p, uint64_t h, uint8_t *dst)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_read_locked(p, h, dst) : bd_read_locked(p, h, dst);
}

/* Release the object; its length, or -1 if the handle is not live (or memory ran out). */
static inline int pool_free_locked(PoolObject *p, uint64_t h)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_free_locked(p, h) : bd_free_locked(p, h);
}

/* Payloads this long or longer are kept raw: a zsmalloc huge object, or a whole buddy page. */
static inline int raw_threshold(const PoolObject *p)
{
    return p->kind == POOL_ZSMALLOC ? zs_raw_threshold(p) : PAGE_SIZE;
}

static inline int compact_step_locked(PoolObject *p, int budget)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_compact_step_locked(p, budget) : bd_compact_step_locked(p);
}

static inline int migrate_page_locked(PoolObject *p, uint32_t pn)
{
    ASSERT_HELD(p->lock);
    return p->kind == POOL_ZSMALLOC ? zs_migrate_page_locked(p, pn) : bd_migrate_page_locked(p, pn);
}

extern PyTypeObject PoolType;

#endif
