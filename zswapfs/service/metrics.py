"""The stats JSON as Prometheus metrics: `zswapfs stats --prometheus` and the daemon's
`--metrics-port` endpoint, both through prometheus-client.

Names follow Prometheus' conventions: `zswapfs_` prefix, the unit in the name (`_bytes`, `_pages`,
`_seconds`), `_total` on counters. Every sample carries a `mountpoint` label; codec, pool, mode,
backing file and image are labels of the `zswapfs_info` metric (value 1), to be joined on
mountpoint in PromQL. zsmalloc's per-class rows become `zswapfs_pool_class_*` with a `class_size`
label. A numeric stats key not in the tables below (one added to the store later) is still
exported, as a gauge named after its key, so the endpoint never silently drops a figure.

The collector computes nothing between scrapes: each scrape calls the daemon's stats function
once (the same one the `stats` file uses), so serving metrics costs nothing per FUSE request.
The HTTP server is a small threaded WSGI server in a daemon thread, bound to 127.0.0.1 unless
told otherwise; the daemon starts it with the mount and stops it at unmount.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

log = logging.getLogger(__name__)

Stats = dict[str, Any]
#: (stats key, metric name, "gauge" or "counter", help); a counter's name ends in _total
Row = tuple[str, str, str, str]

TOP: list[Row] = [
    ("disksize", "zswapfs_disksize_bytes", "gauge", "Image size (zram disksize)."),
    ("orig_data_size", "zswapfs_orig_data_size_bytes", "gauge",
     "Uncompressed size of the pages stored (zram orig_data_size)."),
    ("compr_data_size", "zswapfs_compr_data_size_bytes", "gauge",
     "Compressed size of the pages stored (zram compr_data_size)."),
    ("mem_used_total", "zswapfs_mem_used_bytes", "gauge",
     "Memory the pool holds (zram mem_used_total)."),
    ("mem_limit", "zswapfs_mem_limit_bytes", "gauge", "Pool memory budget; 0 for none."),
    ("mem_used_max", "zswapfs_mem_used_max_bytes", "gauge", "Peak pool memory (zram)."),
    ("same_pages", "zswapfs_same_pages", "gauge", "Same-filled pages, kept without pool memory."),
    ("huge_pages", "zswapfs_huge_pages", "gauge", "Incompressible pages, stored raw."),
    ("stored_pages", "zswapfs_stored_pages", "gauge", "Pages stored in memory."),
    ("pages_compacted", "zswapfs_compacted_pages_total", "counter",
     "Pool pages freed by compaction (zram pages_compacted)."),
    ("failed_reads", "zswapfs_failed_reads_total", "counter", "Reads that failed."),
    ("failed_writes", "zswapfs_failed_writes_total", "counter", "Writes that failed."),
    ("invalid_io", "zswapfs_invalid_io_total", "counter", "Requests outside the image."),
    ("bd_count", "zswapfs_bd_pages", "gauge", "Pages held in the backing file (zram bd_count)."),
    ("bd_reads", "zswapfs_bd_read_pages_total", "counter", "Pages read from the backing file."),
    ("bd_writes", "zswapfs_bd_written_pages_total", "counter",
     "Pages written to the backing file."),
    ("bd_errors", "zswapfs_bd_errors_total", "counter", "Backing file I/O errors."),
    ("written_back_pages", "zswapfs_written_back_pages_total", "counter",
     "Pages moved from the pool to the backing file (zswap written_back_pages)."),
    ("pool_limit_hit", "zswapfs_pool_limit_hit_total", "counter",
     "Writes that found the pool at its limit (zswap pool_limit_hit)."),
    ("reject_compress_poor", "zswapfs_reject_compress_poor_total", "counter",
     "Incompressible pages sent to the backing file (zswap reject_compress_poor)."),
    ("reject_compress_fail", "zswapfs_reject_compress_fail_total", "counter",
     "Pages the codec failed on (zswap reject_compress_fail)."),
    ("reject_alloc_fail", "zswapfs_reject_alloc_fail_total", "counter",
     "Pages the pool had no room for (zswap reject_alloc_fail)."),
    ("reject_reclaim_fail", "zswapfs_reject_reclaim_fail_total", "counter",
     "Pages refused at the memory limit with no backing file (zswap reject_reclaim_fail)."),
    ("recompressions", "zswapfs_recompressed_pages_total", "counter",
     "Idle pages recompressed with a trained dictionary."),
    ("recompressed_pages", "zswapfs_recompressed_held_pages", "gauge",
     "Pages held recompressed now."),
    ("recompress_saved_bytes", "zswapfs_recompress_saved_bytes_total", "counter",
     "Bytes saved by recompression."),
    ("recompress_not_worth", "zswapfs_recompress_not_worth_pages_total", "counter",
     "Pages tried that recompression would not shrink."),
    ("pages_rewarmed", "zswapfs_rewarmed_pages_total", "counter",
     "Recompressed pages read twice and sent back to the write codec."),
    ("dict_count", "zswapfs_dictionaries", "gauge", "Trained dictionaries in use."),
    ("dict_bytes", "zswapfs_dictionary_bytes", "gauge",
     "Bytes of the trained dictionaries (counted in mem_used_total)."),
    ("pages_deduped", "zswapfs_deduped_pages", "gauge",
     "Pages sharing another page's object now."),
    ("dedup_saved_bytes", "zswapfs_dedup_saved_bytes", "gauge", "Bytes dedup saves now."),
    ("dedup_merges", "zswapfs_dedup_merges_total", "counter", "Pages merged by dedup."),
    ("notify_free", "zswapfs_notify_free_pages_total", "counter",
     "Pages freed by discard (zram notify_free: FALLOCATE punch holes from swap)."),
    ("discards", "zswapfs_discards_total", "counter", "Discard requests (FALLOCATE)."),
    ("requests_in_c", "zswapfs_frontend_c_requests_total", "counter",
     "Image requests the native frontend served in C."),
    ("requests_in_python", "zswapfs_frontend_python_requests_total", "counter",
     "Requests the native frontend served by calling Python."),
    ("threads", "zswapfs_frontend_threads", "gauge", "Most worker threads (native frontend)."),
    ("metadata_bytes", "zswapfs_metadata_bytes", "gauge",
     "Index and pool tables outside the pool's pages."),
    ("rss_bytes", "zswapfs_daemon_resident_bytes", "gauge",
     "The daemon's resident memory (VmRSS)."),
]  # fmt: skip
POOL: list[Row] = [
    ("pool_pages", "zswapfs_pool_pages", "gauge", "Pages the pool holds."),
    ("pool_pages_max", "zswapfs_pool_max_pages", "gauge", "Peak pages the pool held."),
    ("objects", "zswapfs_pool_objects", "gauge", "Compressed objects in the pool."),
    ("bytes_stored", "zswapfs_pool_stored_bytes", "gauge", "Bytes of the objects in the pool."),
    ("internal_fragmentation", "zswapfs_pool_fragmentation_bytes", "gauge",
     "Pool memory not holding object bytes."),
    ("metadata_bytes", "zswapfs_pool_metadata_bytes", "gauge", "The pool's own tables."),
    ("pages_compacted", "zswapfs_pool_compacted_pages_total", "counter",
     "Pool pages freed by compaction."),
    ("objects_moved", "zswapfs_pool_moved_objects_total", "counter",
     "Objects moved by compaction and migration."),
    ("migrated_pages", "zswapfs_pool_migrated_pages_total", "counter",
     "Pool pages migrated towards the bottom of the arena."),
    ("arena_segments", "zswapfs_arena_segments", "gauge", "Arena segments mapped."),
    ("segments_released", "zswapfs_arena_released_segments_total", "counter",
     "Arena segments returned to the system."),
    ("arena_holes", "zswapfs_arena_hole_pages", "gauge",
     "Free pages below the arena's high-water mark."),
    ("huge_class_size", "zswapfs_pool_huge_class_size_bytes", "gauge",
     "Objects at least this large are stored raw (zsmalloc)."),
    ("unbuddied_pages", "zswapfs_pool_unbuddied_pages", "gauge",
     "Pool pages with room for another object (zbud, z3fold)."),
    ("buddied_pages", "zswapfs_pool_buddied_pages", "gauge", "Full pool pages (zbud, z3fold)."),
]  # fmt: skip
MAINTENANCE: list[Row] = [
    ("runs", "zswapfs_maintenance_runs_total", "counter", "Maintenance passes."),
    ("compact_steps", "zswapfs_maintenance_compact_steps_total", "counter", "Compaction steps."),
    ("pages_freed", "zswapfs_maintenance_freed_pages_total", "counter",
     "Pool pages freed by maintenance."),
    ("migrated_pages", "zswapfs_maintenance_migrated_pages_total", "counter",
     "Pool pages migrated by maintenance."),
    ("segments_released", "zswapfs_maintenance_released_segments_total", "counter",
     "Arena segments released by maintenance."),
    ("written_back", "zswapfs_maintenance_written_back_pages_total", "counter",
     "Pages written back by maintenance."),
    ("seconds", "zswapfs_maintenance_seconds_total", "counter", "Time spent in maintenance."),
    ("interval", "zswapfs_maintenance_interval_seconds", "gauge", "Time between passes."),
    ("aggressive", "zswapfs_maintenance_aggressive", "gauge",
     "1 if every pass compacts whatever it would gain."),
]  # fmt: skip
CLASSES: list[Row] = [
    ("objs_per_zspage", "zswapfs_pool_class_objects_per_zspage", "gauge",
     "Objects a zspage of this class holds."),
    ("pages_per_zspage", "zswapfs_pool_class_pages_per_zspage", "gauge",
     "Pages in a zspage of this class."),
    ("obj_allocated", "zswapfs_pool_class_allocated_objects", "gauge",
     "Object slots in this class's zspages."),
    ("obj_used", "zswapfs_pool_class_used_objects", "gauge", "Objects stored in this class."),
    ("pages_used", "zswapfs_pool_class_pages", "gauge", "Pages this class holds."),
    ("pages_freeable", "zswapfs_pool_class_freeable_pages", "gauge",
     "Pages compaction could free in this class."),
]  # fmt: skip
#: stats section -> (its rows, prefix for keys the rows do not know)
SECTIONS: dict[str | None, tuple[list[Row], str]] = {
    None: (TOP, "zswapfs_"),
    "pool_stats": (POOL, "zswapfs_pool_"),
    "maintenance": (MAINTENANCE, "zswapfs_maintenance_"),
}
INFO_KEYS = ("codec", "pool", "mode", "backing", "image", "engine", "frontend")
#: stats keys that are not figures
NOT_FIGURES = frozenset({"pid"})


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _family(
    name: str, kind: str, doc: str, labels: list[str]
) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def metric_name(section: str | None, key: str) -> str:
    """The sample name a stats figure is exported under (what a test or a dashboard looks for)."""
    rows, prefix = SECTIONS[section]
    for k, name, _kind, _doc in rows:
        if k == key:
            return name
    return prefix + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def families(st: Stats) -> Iterator[Metric]:
    """Metric families for one stats snapshot."""
    mp = str(st.get("mountpoint", ""))
    info = InfoMetricFamily(
        "zswapfs",
        "What the mount runs: codec, pool, mode, backing file, image, engine, frontend.",
        labels=["mountpoint"],
    )  # fmt: skip
    info.add_metric([mp], {k: str(st.get(k) or "") for k in INFO_KEYS})
    yield info
    for section, (rows, _prefix) in SECTIONS.items():
        data = st if section is None else st.get(section)
        if not isinstance(data, dict):
            continue
        known = {k for k, *_ in rows}
        for key, name, kind, doc in rows:
            value = _number(data.get(key))
            if value is not None:
                fam = _family(name, kind, doc, ["mountpoint"])
                fam.add_metric([mp], value)
                yield fam
        for key, raw in data.items():
            value = _number(raw)
            if key in known or key in NOT_FIGURES or value is None:
                continue
            where = key if section is None else f"{section}.{key}"
            fam = GaugeMetricFamily(
                metric_name(section, key),
                f"stats {where} (exported as it is).",
                labels=["mountpoint"],
            )
            fam.add_metric([mp], value)
            yield fam
    classes = (st.get("pool_stats") or {}).get("classes") or []
    for key, name, kind, doc in CLASSES:
        fam = _family(name, kind, doc, ["mountpoint", "class_size"])
        for row in classes:
            value = _number(row.get(key))
            if value is not None:
                fam.add_metric([mp, str(row["class_size"])], value)
        if classes:
            yield fam
    codec_pages = st.get("codec_pages") or {}
    if codec_pages:
        fam = GaugeMetricFamily(
            "zswapfs_codec_pages",
            "Pool pages by the codec (and dictionary slot) that holds them.",
            labels=["mountpoint", "codec"],
        )
        for codec, pages in codec_pages.items():
            fam.add_metric([mp, str(codec)], float(pages))
        yield fam


class StatsCollector:
    """A prometheus-client collector over a stats function, called once per scrape."""

    def __init__(self, source: Callable[[], Stats]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from families(self.source())


def registry_for(source: Callable[[], Stats]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    return registry


def render(st: Stats) -> str:
    """The Prometheus text format of one stats snapshot (`zswapfs stats --prometheus`)."""
    return generate_latest(registry_for(lambda: st)).decode()


# -- the daemon's endpoint -----------------------------------------------------------------------
class MetricsError(Exception):
    pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up the unmount


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class MetricsServer:
    """GET /metrics (any path) on address:port, served from a daemon thread."""

    def __init__(self, source: Callable[[], Stats], address: str, port: int) -> None:
        server_class = _Server6 if ":" in address else _Server
        try:
            self.httpd = make_server(
                address, port, make_wsgi_app(registry_for(source)), server_class, _Quiet
            )
        except OSError as exc:
            raise MetricsError(
                f"metrics: cannot listen on {address}:{port}: {exc.strerror or exc}"
            ) from None
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    @property
    def url(self) -> str:
        host, port = str(self.httpd.server_address[0]), int(self.httpd.server_address[1])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def start(self) -> None:
        self.thread.start()
        log.info("metrics on %s", self.url)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()
