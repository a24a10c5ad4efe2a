"""Choosing the engine: --engine / the `engine` key, the fallback to python, `stats`."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from tests.conftest import Mounted, needs_mount
from zswapfs.engine import native
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.service.config import ConfigError, MountConfig, from_mapping

SIZE = 8 << 20
needs_native = pytest.mark.skipif(not native.available(), reason=str(native.UNAVAILABLE))


@pytest.mark.unit
def test_engine_key_and_its_check() -> None:
    assert MountConfig().engine == "native"
    assert from_mapping({"engine": "python"}).check().engine == "python"
    with pytest.raises(ConfigError, match="engine: unknown engine 'fast'"):
        from_mapping({"engine": "fast"}).check()
    assert MountConfig().page_workers == -1
    assert from_mapping({"page-workers": 0}).check().page_workers == 0
    with pytest.raises(ConfigError, match="page-workers: 65 out of range"):
        from_mapping({"page-workers": 65}).check()


@pytest.mark.mount
@needs_mount
@needs_native
@pytest.mark.parametrize(
    ("args", "engine"),
    [
        ([], "native"),
        (["--engine", "python"], "python"),
        (["--engine", "native", "--pool", "zbud"], "native"),
        (["--pool", "z3fold"], "native"),
        (["--engine", "native", "--codec", "zstd:1"], "native"),
    ],
)
def test_stats_name_the_engine(mount: Callable[..., Mounted], args: list[str], engine: str) -> None:
    m = mount("--size", str(SIZE), *args)
    rnd = random.Random(2)
    data = b"".join(rnd.randbytes(1000) + bytes(PAGE_SIZE - 1000) for _ in range(64))
    fd = os.open(m.image, os.O_RDWR)
    try:
        os.pwrite(fd, data, 12345)
        assert os.pread(fd, len(data), 12345) == data
    finally:
        os.close(fd)
    stats = m.stats()
    assert stats["engine"] == engine
    assert stats["stored_pages"] == 65  # 64 pages' worth, unaligned: 65 pages touched
    for pool in ("zbud", "z3fold"):
        if pool in args:
            assert stats["pool"] == pool and "unbuddied_pages" in stats["pool_stats"]
    assert "native engine unavailable" not in m.log_text()


@pytest.mark.mount
@needs_mount
@needs_native
def test_big_writes_go_to_the_page_workers(mount: Callable[..., Mounted]) -> None:
    """--page-workers 1: a 1 MiB write is one batch for the worker, the bytes read back."""
    m = mount("--size", str(SIZE), "--page-workers", "1")
    rnd = random.Random(4)
    data = b"".join(rnd.randbytes(900) + bytes(PAGE_SIZE - 900) for _ in range(256))
    fd = os.open(m.image, os.O_RDWR)
    try:
        os.pwrite(fd, data, 1 << 20)
        assert os.pread(fd, len(data), 1 << 20) == data
    finally:
        os.close(fd)
    stats = m.stats()
    assert stats["page_workers"]["workers"] == 1 and stats["page_workers"]["batches"] >= 1
    assert stats["stored_pages"] == 256
