"""zswapfs: a compressed swap image served over FUSE."""

__version__ = "0.1.0"
