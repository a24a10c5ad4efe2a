"""Codecs own the bytes of one page: compression, same-filled detection, raw ("huge") pages.

A codec turns a 4 KiB page into a compressed payload and back. It knows nothing about where the
payload is kept. Compressor contexts are per thread (zstd contexts are not thread-safe), so a
codec object may be shared by the FUSE thread and worker threads.

Same-filled detection follows zram: a page that is one 8-byte word repeated 512 times is stored
as that word in the page index and costs no pool memory (zero pages are the common case).
"""

from __future__ import annotations

import threading
from typing import Protocol

import lz4.block
import zstandard

PAGE_SIZE = 4096
#: a page is "same-filled" when it is one machine word repeated (zram's unit of comparison)
_WORD = 8
_WORDS_PER_PAGE = PAGE_SIZE // _WORD


class CodecError(Exception):
    """A payload could not be encoded or decoded (corruption or a bad codec specification)."""


def same_filled_value(page: bytes) -> int | None:
    """Return the repeated 64-bit word if *page* is same-filled, else None.

    One bytes comparison in C: cheaper than compressing, and it catches zero pages first.
    """
    word = page[:_WORD]
    if page == word * _WORDS_PER_PAGE:
        return int.from_bytes(word, "little")
    return None


def fill_page(value: int) -> bytes:
    """The page whose every 64-bit word is *value* (inverse of same_filled_value)."""
    return value.to_bytes(_WORD, "little") * _WORDS_PER_PAGE


class Codec(Protocol):
    name: str

    def compress(self, page: bytes) -> bytes: ...

    def decompress(self, payload: bytes) -> bytes: ...


class NoneCodec:
    """Stores pages as they are; every page becomes a raw ("huge") page in the pool."""

    name = "none"

    def compress(self, page: bytes) -> bytes:
        return page

    def decompress(self, payload: bytes) -> bytes:
        return payload


class Lz4Codec:
    """lz4 block format without a size header: the store knows the page size (4096)."""

    name = "lz4"

    def compress(self, page: bytes) -> bytes:
        return lz4.block.compress(page, store_size=False)

    def decompress(self, payload: bytes) -> bytes:
        try:
            out = lz4.block.decompress(payload, uncompressed_size=PAGE_SIZE)
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(f"lz4: {exc}") from exc
        if len(out) != PAGE_SIZE:
            raise CodecError(f"lz4: payload decoded to {len(out)} bytes, not a page")
        return out


class ZstdCodec:
    """zstd at a fixed level; one compressor and one decompressor per thread, reused."""

    #: zstd's own bounds for compression levels (negative levels are the "fast" modes)
    MIN_LEVEL = -7
    MAX_LEVEL = 22

    def __init__(self, level: int = 3) -> None:
        if not self.MIN_LEVEL <= level <= self.MAX_LEVEL:
            raise CodecError(f"zstd level {level} out of range {self.MIN_LEVEL}..{self.MAX_LEVEL}")
        self.level = level
        self.name = f"zstd:{level}"
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            # no frame checksum or content size: the page size is fixed and the pool is memory
            ctx = (
                zstandard.ZstdCompressor(
                    level=self.level, write_checksum=False, write_content_size=False
                ),
                zstandard.ZstdDecompressor(),
            )
            self._local.ctx = ctx
        return ctx

    def compress(self, page: bytes) -> bytes:
        return self._contexts()[0].compress(page)

    def decompress(self, payload: bytes) -> bytes:
        try:
            out = self._contexts()[1].decompress(payload, max_output_size=PAGE_SIZE)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd: {exc}") from exc
        if len(out) != PAGE_SIZE:
            raise CodecError(f"zstd: payload decoded to {len(out)} bytes, not a page")
        return out


class DictZstdCodec(ZstdCodec):
    """zstd at a fixed level with a trained dictionary (recompression of idle pages): the
    dictionary holds what pages have in common, so small payloads compress far better."""

    def __init__(self, level: int, dictionary: bytes) -> None:
        super().__init__(level)
        self.dictionary = dictionary
        self.name = f"zstd:{level}+dict"
        self._dict = zstandard.ZstdCompressionDict(
            dictionary, dict_type=zstandard.DICT_TYPE_FULLDICT
        )
        self._dict.precompute_compress(level=level)

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (
                zstandard.ZstdCompressor(
                    level=self.level,
                    dict_data=self._dict,
                    write_checksum=False,
                    write_content_size=False,
                    write_dict_id=False,
                ),
                zstandard.ZstdDecompressor(dict_data=self._dict),
            )
            self._local.ctx = ctx
        return ctx


def train_dictionary(pages: list[bytes], size: int, level: int) -> bytes:
    """A zstd dictionary of at most *size* bytes trained on *pages* (zstandard's trainer)."""
    samples: list[bytes | bytearray | memoryview] = list(pages)
    try:
        return zstandard.train_dictionary(size, samples, level=level).as_bytes()
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd dictionary training: {exc}") from exc


CODEC_NAMES = ("lz4", "zstd[:LEVEL]", "none")


def make_codec(spec: str) -> Codec:
    """Build a codec from 'lz4', 'zstd', 'zstd:LEVEL' or 'none'."""
    name, _, arg = spec.strip().lower().partition(":")
    if name == "lz4" and not arg:
        return Lz4Codec()
    if name == "none" and not arg:
        return NoneCodec()
    if name == "zstd":
        if not arg:
            return ZstdCodec()
        try:
            level = int(arg)
        except ValueError:
            raise CodecError(f"bad zstd level {arg!r}: expected an integer") from None
        return ZstdCodec(level)
    raise CodecError(f"unknown codec {spec!r}: expected one of {', '.join(CODEC_NAMES)}")
