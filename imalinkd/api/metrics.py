"""Prometheus metrics, in their own ``CollectorRegistry`` (never the global one).

Two kinds:

- event metrics (:class:`ImportMetrics`), fed by :class:`imalinkd.api.hub.ProgressHub`
  while imports run: bytes and files copied, throughput, imports and file failures by
  cause, verification results, event-to-session latency;
- state metrics collected at scrape time (:class:`CatalogCollector`,
  :class:`StorageCollector`): sessions by status from the catalog, and free space and
  utilisation of every storage root reachable now. A root that is unplugged simply has
  no series; a scrape never fails because a drive or the catalog is away (the problem
  is logged and ``imalinkd_scrape_errors_total`` counts it).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

log = structlog.get_logger(__name__)

# Reasons the engine gives for a file it did not archive, by category (label values stay few).
_FILE_REASONS = (
    ("duplicate", "duplicate"),
    ("verification failed", "verification"),
    ("symlink", "symlink"),
    ("not a regular file", "special_file"),
    ("no longer a regular file", "special_file"),
    ("changed while", "changed_during_import"),
    ("unreadable", "unreadable"),
    ("cannot stat", "unreadable"),
    ("filtered out", "filtered"),
    ("storage root itself", "storage_root"),
    ("went away", "source_gone"),
    ("interrupted", "interrupted"),
    ("not attempted", "not_attempted"),
    ("archive is full", "storage_full"),
    ("read-only", "storage_read_only"),
    ("archive", "storage_error"),
    ("no free name", "name_conflict"),
)
# Why a whole import failed.
_IMPORT_CAUSES = (
    ("full", "storage_full"),
    ("too little room", "storage_full"),
    ("read-only", "storage_read_only"),
    ("not writable", "storage_read_only"),
    ("stop requested", "interrupted"),
    ("interrupted", "interrupted"),
    ("went away", "source_gone"),
    ("card was probably removed", "source_gone"),
    ("no storage root", "storage_unavailable"),
    ("not mounted", "storage_unavailable"),
    ("cannot be imported", "bad_source"),
    ("verification", "verification"),
    ("internal error", "internal_error"),
)


def _categorise(text: str | None, table: tuple[tuple[str, str], ...]) -> str:
    low = (text or "").lower()
    for needle, category in table:
        if needle in low:
            return category
    return "other"


def file_reason_category(reason: str | None) -> str:
    """A short, bounded label for why a file was not archived ("symlink", "unreadable"…)."""
    return _categorise(reason, _FILE_REASONS)


def import_failure_cause(error: str | None) -> str:
    """A short, bounded label for why an import failed ("storage_full", "source_gone"…)."""
    return _categorise(error, _IMPORT_CAUSES)


class ImportMetrics:
    """Counters fed while imports run. Thread-safe (prometheus_client metrics are)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes_copied = Counter("imalinkd_copied_bytes", "Bytes copied and verified into the archive", registry=r)
        self.files_copied = Counter("imalinkd_copied_files", "Files copied and verified into the archive", registry=r)
        self.throughput = Gauge("imalinkd_copy_throughput_mb_per_second",
                                "Current copy throughput of the imports running now (MB/s, 10^6 bytes)", registry=r)
        self.active = Gauge("imalinkd_imports_active", "Imports running now", registry=r)
        self.imports = Counter("imalinkd_imports", "Imports that ended, by status (completed, failed, nothing_new)",
                               ["status"], registry=r)
        self.import_failures = Counter("imalinkd_import_failures", "Failed imports by cause", ["cause"], registry=r)
        self.file_failures = Counter("imalinkd_file_failures", "Source files not archived, by reason category",
                                     ["reason"], registry=r)
        self.verifications = Counter("imalinkd_verifications", "File verifications by result (ok, damaged, missing)",
                                     ["result"], registry=r)
        self.latency = Histogram("imalinkd_event_to_session_seconds",
                                 "Time from a card or drop-folder event to its import session starting",
                                 buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=r)
        self.scrub_checked = Counter("imalinkd_scrub_checked_files",
                                     "Files re-verified by the daemon's scrubs, by result (ok, damaged, missing, unreadable)",
                                     ["result"], registry=r)
        self.scrub_bytes = Counter("imalinkd_scrub_checked_bytes", "Bytes re-read by the daemon's scrubs", registry=r)
        self.scrape_errors = Counter("imalinkd_scrape_errors", "Errors while collecting metrics at scrape time",
                                     ["collector"], registry=r)
        for status in ("completed", "failed", "nothing_new"):
            self.imports.labels(status)
        for result in ("ok", "damaged", "missing"):
            self.verifications.labels(result)
        for result in ("ok", "damaged", "missing", "unreadable"):
            self.scrub_checked.labels(result)

    def scrub_checked_file(self, result: str, size: int) -> None:
        """One file re-verified by a scrub (a damaged one is also a verification result)."""
        self.scrub_checked.labels(result).inc()
        self.scrub_bytes.inc(size)
        self.verifications.labels("damaged" if result == "unreadable" else result).inc()

    def progress(self, new_files: int, new_bytes: int, throughput_mb_s: float, active: int) -> None:
        if new_bytes:
            self.bytes_copied.inc(new_bytes)
        if new_files:
            self.files_copied.inc(new_files)
            # a file counts as copied only after its verification passed
            self.verifications.labels("ok").inc(new_files)
        self.throughput.set(throughput_mb_s)
        self.active.set(active)

    def import_ended(self, outcome: str, error: str | None, skipped: Iterable[Any], count: bool = True) -> None:
        if count:
            self.imports.labels(outcome).inc()
            if outcome == "failed":
                self.import_failures.labels(import_failure_cause(error)).inc()
        for entry in skipped:
            get = entry.get if isinstance(entry, dict) else (lambda k, e=entry: getattr(e, k, None))
            if get("duplicate_of"):
                continue
            category = file_reason_category(get("reason"))
            self.file_failures.labels(category).inc()
            if category == "verification":
                self.verifications.labels("damaged").inc()

    def verify_report(self, report: Any) -> None:
        get = report.get if isinstance(report, dict) else (lambda k, r=report: getattr(r, k, None))
        damaged, missing = len(get("damaged") or []), len(get("missing") or [])
        ok = max(0, (get("checked") or 0) - damaged - missing)
        if ok:
            self.verifications.labels("ok").inc(ok)
        if damaged:
            self.verifications.labels("damaged").inc(damaged)
        if missing:
            self.verifications.labels("missing").inc(missing)

    def observe_latency(self, seconds: float) -> None:
        if seconds >= 0:
            self.latency.observe(seconds)


class _Delegate:
    """Exposes another registry's metrics inside an app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        yield from self._registry.collect()


class CatalogCollector:
    """``imalinkd_sessions{status}`` and catalog totals, read from the catalog at scrape."""

    STATUSES = ("not_started", "in_progress", "completed", "failed")

    def __init__(self, catalog, metrics: ImportMetrics) -> None:
        self.catalog = catalog
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily: describing would query the catalog at registration

    def collect(self) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from imalinkd.catalog import Image, ImportSession
        from imalinkd.importer import effective_status

        sessions = GaugeMetricFamily("imalinkd_sessions", "Import sessions in the catalog by status "
                                     "(an in_progress session without a live importer counts as failed)", labels=["status"])
        images = GaugeMetricFamily("imalinkd_catalog_images", "Archived files in the catalog")
        archived = GaugeMetricFamily("imalinkd_catalog_bytes", "Bytes of archived files in the catalog")
        try:
            counts = dict.fromkeys(self.STATUSES, 0)
            with self.catalog.session() as s:
                for status, n in s.execute(select(ImportSession.copy_status, func.count()).group_by(ImportSession.copy_status)):
                    if status != "in_progress":
                        counts[status] = counts.get(status, 0) + n
                for row in s.scalars(select(ImportSession).where(ImportSession.copy_status == "in_progress")):
                    st = effective_status(row)
                    counts[st] = counts.get(st, 0) + 1
                n_images, n_bytes = s.execute(select(func.count(Image.id), func.coalesce(func.sum(Image.file_size), 0))).one()
        except Exception as e:
            self.metrics.scrape_errors.labels("catalog").inc()
            log.warning("metrics_catalog_failed", error=f"{type(e).__name__}: {e}")
            return
        for status, n in sorted(counts.items()):
            sessions.add_metric([status], n)
        images.add_metric([], n_images)
        archived.add_metric([], n_bytes)
        yield sessions
        yield images
        yield archived


class ScrubCollector:
    """``imalinkd_scrub_files{result}``: archived files by the result of their last scrub,
    from the catalog (so it counts what any scrub found: the daemon's or a hand-run one);
    ``imalinkd_scrub_unchecked_files``: files no scrub has read yet."""

    def __init__(self, catalog, metrics: ImportMetrics) -> None:
        self.catalog = catalog
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from imalinkd.catalog import Image
        from imalinkd.scrub.findings import counts_by_result

        files = GaugeMetricFamily("imalinkd_scrub_files", "Archived file copies by the result of their last scrub "
                                  "(ok, damaged, missing, unreadable)", labels=["result"])
        try:
            with self.catalog.session() as s:
                counts = counts_by_result(s)
                images = s.scalar(select(func.count(Image.id))) or 0
        except Exception as e:
            self.metrics.scrape_errors.labels("scrub").inc()
            log.warning("metrics_scrub_failed", error=f"{type(e).__name__}: {e}")
            return
        for result, n in counts.items():
            files.add_metric([result], n)
        unchecked = GaugeMetricFamily("imalinkd_scrub_unchecked_files", "Archived files that no scrub has read yet")
        unchecked.add_metric([], max(0, images - sum(counts.values())))
        yield files
        yield unchecked


class StorageCollector:
    """Free space and utilisation of every storage root reachable now (``locate.scan_locations``)."""

    def __init__(self, config, catalog, metrics: ImportMetrics) -> None:
        self.config = config
        self.catalog = catalog
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from imalinkd.locate import scan_locations

        labels = ["storage_id", "label"]
        free = GaugeMetricFamily("imalinkd_storage_free_bytes", "Free bytes on the file system of a reachable storage root", labels=labels)
        size = GaugeMetricFamily("imalinkd_storage_size_bytes", "Size of the file system of a reachable storage root", labels=labels)
        used = GaugeMetricFamily("imalinkd_storage_utilisation_ratio", "Used fraction (0-1) of a reachable storage root's file system", labels=labels)
        count = GaugeMetricFamily("imalinkd_storage_sessions", "Session directories on a reachable storage root", labels=labels)
        low = GaugeMetricFamily("imalinkd_storage_low_space", "1 when a reachable storage root is under its free-space warning threshold", labels=labels)
        reachable = GaugeMetricFamily("imalinkd_storage_roots_reachable", "Storage roots reachable now")
        try:
            locations = scan_locations(self.config, self.catalog)
        except Exception as e:
            self.metrics.scrape_errors.labels("storage").inc()
            log.warning("metrics_storage_failed", error=f"{type(e).__name__}: {e}")
            return
        for loc in locations:
            lv = [str(loc.get("storage_id") or ""), _label_value(loc.get("label"))]
            if loc.get("free_bytes") is not None:
                free.add_metric(lv, loc["free_bytes"])
            if loc.get("total_bytes"):
                size.add_metric(lv, loc["total_bytes"])
                if loc.get("free_bytes") is not None:
                    used.add_metric(lv, (loc["total_bytes"] - loc["free_bytes"]) / loc["total_bytes"])
            count.add_metric(lv, loc.get("session_count") or 0)
            low.add_metric(lv, 1 if loc.get("low_space") else 0)
        reachable.add_metric([], len(locations))
        yield from (free, size, used, count, low, reachable)


def _label_value(text: Any) -> str:
    return re.sub(r"[\x00-\x1f]", " ", str(text or ""))[:100]


def app_registry(config, catalog, metrics: ImportMetrics) -> CollectorRegistry:
    """A registry for one app: the hub's event metrics plus the scrape-time collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Delegate(metrics.registry))
    registry.register(CatalogCollector(catalog, metrics))
    registry.register(StorageCollector(config, catalog, metrics))
    registry.register(ScrubCollector(catalog, metrics))
    return registry
