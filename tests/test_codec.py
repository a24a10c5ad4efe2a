from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zswapfs.engine.codec import (
    PAGE_SIZE,
    CodecError,
    ZstdCodec,
    fill_page,
    make_codec,
    same_filled_value,
)

pytestmark = pytest.mark.unit

SPECS = ["lz4", "zstd", "zstd:1", "zstd:3", "zstd:19", "zstd:-3", "none"]


def real_pages(limit: int = 200) -> list[bytes]:
    """Pages of real data from this machine: the interpreter binary, stdlib source, numpy."""
    import numpy

    files = [Path(sys.executable).resolve(), Path(os.__file__), Path(numpy.__file__)]
    pages = []
    for path in files:
        data = path.read_bytes()
        for off in range(0, len(data) - PAGE_SIZE, max(PAGE_SIZE, len(data) // 80)):
            pages.append(data[off : off + PAGE_SIZE])
    return pages[:limit]


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_random_and_real(spec: str) -> None:
    codec = make_codec(spec)
    pages = [os.urandom(PAGE_SIZE), bytes(PAGE_SIZE), os.urandom(100) * 41][:3]
    pages = [p[:PAGE_SIZE] for p in pages] + real_pages()
    for page in pages:
        assert len(page) == PAGE_SIZE
        assert codec.decompress(codec.compress(page)) == page


@pytest.mark.parametrize("spec", ["lz4", "zstd:1"])
def test_real_data_compresses(spec: str) -> None:
    codec = make_codec(spec)
    pages = real_pages()
    total = sum(len(codec.compress(p)) for p in pages)
    assert total < 0.9 * len(pages) * PAGE_SIZE


#: pages built from runs of short patterns: from all-repeats to nearly random
pages_strategy = st.builds(
    lambda runs, seed: (b"".join(pat * n for pat, n in runs) + seed * PAGE_SIZE)[:PAGE_SIZE],
    st.lists(st.tuples(st.binary(min_size=1, max_size=24), st.integers(1, 300)), max_size=40),
    st.binary(min_size=1, max_size=64),
)


@given(pages_strategy)
def test_round_trip_any_page(page: bytes) -> None:
    for spec in ("lz4", "zstd:3"):
        codec = make_codec(spec)
        assert codec.decompress(codec.compress(page)) == page


@pytest.mark.parametrize("spec", ["lz4", "zstd:3"])
def test_corrupt_payload_is_codec_error(spec: str) -> None:
    codec = make_codec(spec)
    payload = codec.compress(b"abc" * 1365 + b"d")
    with pytest.raises(CodecError):
        codec.decompress(payload[: len(payload) // 2])
    with pytest.raises(CodecError):
        codec.decompress(b"\xff" * 40)


@pytest.mark.parametrize("bad", ["gzip", "zstd:x", "zstd:99", "lz4:3", "", "none:1"])
def test_bad_codec_spec(bad: str) -> None:
    with pytest.raises(CodecError):
        make_codec(bad)


def test_zstd_context_per_thread() -> None:
    import threading

    codec = ZstdCodec(3)
    pages = real_pages(40)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for page in pages:
                assert codec.decompress(codec.compress(page)) == page
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_same_filled(word: int) -> None:
    page = fill_page(word)
    assert len(page) == PAGE_SIZE
    assert same_filled_value(page) == word
    assert same_filled_value(page[:-1] + bytes([page[-1] ^ 1])) is None
