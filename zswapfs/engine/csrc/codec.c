/* Codecs: see codec.h. */
#include "codec.h"

pthread_key_t zstd_key;

void zstd_local_free(void *v)
{
    ZstdLocal *l = v;
    ZSTD_freeCCtx(l->cctx);
    ZSTD_freeDCtx(l->dctx);
    free(l);
}

ZstdLocal *zstd_local(int level)
{
    ZstdLocal *l = pthread_getspecific(zstd_key);
    if (!l) {
        l = calloc(1, sizeof(*l));
        if (!l)
            return NULL;
        l->cctx = ZSTD_createCCtx();
        l->dctx = ZSTD_createDCtx();
        l->level = INT32_MIN;
        if (!l->cctx || !l->dctx || pthread_setspecific(zstd_key, l) != 0) {
            zstd_local_free(l);
            return NULL;
        }
    }
    if (level != ANY_LEVEL && l->level != level) {
        /* as python-zstandard is used in codec.py: no checksum, no content size */
        ZSTD_CCtx_reset(l->cctx, ZSTD_reset_session_and_parameters);
        ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_compressionLevel, level);
        ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_checksumFlag, 0);
        ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_contentSizeFlag, 0);
        l->level = level;
    }
    return l;
}

/* compressed length, or -1 when the codec failed */
int compress_page(int codec, int level, const uint8_t *src, uint8_t *dst)
{
    if (codec == CODEC_LZ4) {
        int n = LZ4_compress_default((const char *)src, (char *)dst, PAGE_SIZE, COMPRESS_BOUND);
        return n > 0 ? n : -1;
    }
    if (codec == CODEC_ZSTD) {
        ZstdLocal *l = zstd_local(level);
        if (!l)
            return -1;
        size_t n = ZSTD_compress2(l->cctx, dst, COMPRESS_BOUND, src, PAGE_SIZE);
        return ZSTD_isError(n) ? -1 : (int)n;
    }
    memcpy(dst, src, PAGE_SIZE);
    return PAGE_SIZE;
}

/* 0 when *src* decoded to exactly one page */
int decompress_page(int codec, const uint8_t *src, int len, uint8_t *dst)
{
    if (codec == CODEC_LZ4)
        return LZ4_decompress_safe((const char *)src, (char *)dst, len, PAGE_SIZE) == PAGE_SIZE
                   ? 0
                   : -1;
    if (codec == CODEC_ZSTD) {
        ZstdLocal *l = zstd_local(ANY_LEVEL);
        if (!l)
            return -1;
        size_t n = ZSTD_decompressDCtx(l->dctx, dst, PAGE_SIZE, src, (size_t)len);
        return !ZSTD_isError(n) && n == PAGE_SIZE ? 0 : -1;
    }
    return -1; /* the none codec stores every page raw: a shorter object is corrupt */
}

/* 0 when *src*, compressed with a slot's dictionary, decoded to exactly one page */
int dict_decompress_page(const ZSTD_DDict *ddict, const uint8_t *src, int len,
                                uint8_t *dst)
{
    ZstdLocal *l = zstd_local(ANY_LEVEL);
    if (!l)
        return -1;
    size_t n = ZSTD_decompress_usingDDict(l->dctx, dst, PAGE_SIZE, src, (size_t)len, ddict);
    return !ZSTD_isError(n) && n == PAGE_SIZE ? 0 : -1;
}

/* a page compressed with a slot's digested dictionary, with the frame settings codec.py's
 * DictZstdCodec uses (no checksum, no content size, no dictionary id); -1 when it failed */
int dict_compress_page(const ZSTD_CDict *cdict, const uint8_t *src, uint8_t *dst)
{
    ZstdLocal *l = zstd_local(0);
    if (!l)
        return -1;
    l->level = INT32_MIN; /* the context's next plain zstd use sets its parameters again */
    ZSTD_CCtx_reset(l->cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_checksumFlag, 0);
    ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_contentSizeFlag, 0);
    ZSTD_CCtx_setParameter(l->cctx, ZSTD_c_dictIDFlag, 0);
    if (ZSTD_isError(ZSTD_CCtx_refCDict(l->cctx, cdict)))
        return -1;
    size_t n = ZSTD_compress2(l->cctx, dst, COMPRESS_BOUND, src, PAGE_SIZE);
    ZSTD_CCtx_refCDict(l->cctx, NULL);
    return ZSTD_isError(n) ? -1 : (int)n;
}
