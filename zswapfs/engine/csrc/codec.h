/* Codecs: one compressor and decompressor context per thread (zstd contexts are not
 * thread-safe), made on first use and freed when the thread ends.                             */
#ifndef ZS_CODEC_H
#define ZS_CODEC_H

#include "common.h"

typedef struct {
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    int level;
} ZstdLocal;

#define COMPRESS_BOUND 4352 /* >= LZ4_compressBound(4096) and ZSTD_compressBound(4096) */
#define ANY_LEVEL INT32_MIN /* zstd_local for decompression: the compressor is left as it is */

extern pthread_key_t zstd_key; /* this thread's ZstdLocal (module.c creates the key) */
void zstd_local_free(void *v);
ZstdLocal *zstd_local(int level);
/* compressed length, or -1 when the codec failed */
int compress_page(int codec, int level, const uint8_t *src, uint8_t *dst);
/* 0 when *src* decoded to exactly one page */
int decompress_page(int codec, const uint8_t *src, int len, uint8_t *dst);
int dict_decompress_page(const ZSTD_DDict *ddict, const uint8_t *src, int len, uint8_t *dst);
int dict_compress_page(const ZSTD_CDict *cdict, const uint8_t *src, uint8_t *dst);

#endif
