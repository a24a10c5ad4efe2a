"""The compiled page engine (zswapfs/engine/csrc/, one source file per object: the pools, the
store and the native FUSE frontend), linked against the system liblz4, libzstd and libfuse3 found
with pkg-config. For a user's `pip install` the extension is optional: without a
compiler or those headers zswapfs still installs and runs its Python engine (the daemon logs
that the native engine is unavailable and `stats` shows "engine": "python"). With
ZSWAPFS_REQUIRE_NATIVE=1 (the Makefile's set-up, so `make test` and CI) a build failure is an
error, never a silent fallback."""

import glob
import os
import subprocess

from setuptools import Extension, setup

LIBS = ["liblz4", "libzstd", "fuse3"]


def pkg_config(flag: str, libs: list[str] = LIBS) -> list[str]:
    try:
        out = subprocess.run(
            ["pkg-config", flag, *libs], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


cflags = pkg_config("--cflags")
libs = pkg_config("--libs") or ["-llz4", "-lzstd", "-lfuse3"]

setup(
    ext_modules=[
        Extension(
            "zswapfs.engine._native",
            sorted(glob.glob("zswapfs/engine/csrc/*.c")),
            depends=sorted(glob.glob("zswapfs/engine/csrc/*.h")),
            # hidden: only PyInit__native leaves the module (the engine's own names stay inside)
            extra_compile_args=[*cflags, "-O2", "-fvisibility=hidden", "-Wall", "-Wextra",
                                "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type"],
            extra_link_args=libs,
            optional=os.environ.get("ZSWAPFS_REQUIRE_NATIVE") != "1",
        ),
        # the C yardstick the benchmarks quote zswapfs against (zswapfs/lab/ramfs.py)
        Extension(
            "zswapfs.lab._ramfs",
            ["zswapfs/lab/csrc/ramfs.c"],
            extra_compile_args=[*pkg_config("--cflags", ["fuse3"]), "-O2", "-Wall",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type",
                                "-Wno-unused-parameter"],
            extra_link_args=pkg_config("--libs", ["fuse3"]) or ["-lfuse3"],
            optional=True,
        ),
    ]
)
