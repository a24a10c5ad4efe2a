"""Type stub of the C yardstick (csrc/ramfs.c)."""

def serve(
    mountpoint: str, size: int, threads: int = 4, clone_fd: bool = False, keep: bool = True
) -> int: ...
