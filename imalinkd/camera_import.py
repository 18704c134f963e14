"""A camera on a USB cable imported as one session: read once into staging, imported by
the ordinary engine, every archived file compared with the hash taken while reading the
camera. See :mod:`imalinkd.camera` for the reading and the staging."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import structlog
from sqlalchemy import select

from imalinkd import storage
from imalinkd.camera import Camera, CameraError, CameraFile, Gphoto2, Staging
from imalinkd.catalog import Catalog, Image, ImportSession
from imalinkd.config import Config
from imalinkd.copier import Progress, ProgressCallback
from imalinkd.errors import ImalinkError, StorageFullError, human_bytes
from imalinkd.importer import ImportResult, SourceInfo, import_source, resume_session
from imalinkd.manifest import read_manifest
from imalinkd.sessions import effective_status

log = structlog.get_logger()


def staging_dir(config: Config) -> Path:
    return config.cameras.staging_dir or config.daemon.state_dir / "cameras"


def import_camera(config: Config, camera: Camera, *, gphoto2: Gphoto2 | None = None, description: str | None = None,
                  catalog: Catalog | None = None, cancel: threading.Event | None = None,
                  progress: ProgressCallback | None = None, storage_root: str | None = None) -> ImportResult:
    """Import what ``camera`` holds that is not archived from it yet. Raises ImalinkError
    for what prevents starting (the camera not answering, no room in staging)."""
    gp = gphoto2 or Gphoto2(config.cameras.gphoto2)
    cancel = cancel or threading.Event()
    own = catalog is None
    catalog = catalog or Catalog.open(config)
    try:
        if camera.serial is None:
            camera = gp.identify(camera)
        listed = gp.list_files(camera)
        known = archived_from(catalog, camera)
        new = [f for f in listed if (f.rel, f.size) not in known]
        staging = Staging(staging_dir(config), camera)
        staged = _stage(config, gp, camera, staging, new, cancel, progress)
        if staged is None:
            return ImportResult(None, None, None, "failed", error="stopped while reading the camera",
                                message=f"stopped while reading {camera.name}; the files read so far are kept: "
                                        "connect it again (or run import-camera again) to go on")
        if not staged:
            said = f"{len(listed)} file(s), all archived from it before" if listed else "it lists no files"
            return ImportResult(None, None, None, "completed", message=f"nothing new on {camera.name}: {said}")
        result = _import_staged(config, catalog, camera, staging, description, cancel, progress, storage_root)
        if result.copy_status == "completed":
            problems = compare_with_camera(result, staged)
            if problems:
                result.copy_status, result.error = "failed", "; ".join(problems[:5])
                result.message = f"archived files differ from what was read from {camera.name}: {result.error}; staging kept at {staging.dir}"
                log.error("camera_archive_mismatch", camera=camera.name, problems=problems)
                return result
            staging.remove()
            result.message = f"files have been copied to storage and checked against the camera; {camera.name} is no longer needed ({result.storage_path or 'nothing new'})"
        return result
    finally:
        if own:
            catalog.close()


def _stage(config, gp: Gphoto2, camera: Camera, staging: Staging, files: list[CameraFile], cancel: threading.Event,
           progress: ProgressCallback | None) -> dict[str, tuple[int, str]] | None:
    """Read the files not staged yet; returns every staged file (path -> size, sha256), or
    None when stopped."""
    staging.dir.mkdir(parents=True, exist_ok=True)
    staging.remove_partials()
    staged = staging.load()
    wanted = {f.rel for f in files}
    staged = {rel: v for rel, v in staged.items() if rel in wanted}
    todo = [f for f in files if staged.get(f.rel, (None,))[0] != f.size]
    need = sum(f.size for f in todo)
    free, _ = storage.disk_free(str(staging.dir))
    margin = config.storage.safety_margin_mb * 1024 * 1024
    if free < need + margin:
        raise StorageFullError(path=str(staging.dir), free=human_bytes(free), needed=human_bytes(need + margin),
                               resume_hint=" (or set [cameras] staging_dir)")
    prog = Progress(phase="camera_reading", source=f"camera:{camera.name}", files_total=len(todo), bytes_total=need)
    log.info("camera_reading", camera=camera.name, port=camera.port, files=len(todo), bytes=need, staged_before=len(staged))

    def on_bytes(n: int) -> None:
        prog.bytes_done += n
        if progress:
            progress(prog)

    for f in todo:
        prog.current_file = f.rel
        try:
            staged[f.rel] = (f.size, staging.fetch(gp, camera, f, cancel, on_bytes))
        except InterruptedError:
            return None
        prog.files_done += 1
    return staged


def _import_staged(config, catalog, camera: Camera, staging: Staging, description, cancel, progress, storage_root) -> ImportResult:
    resumable = find_resumable_camera_session(catalog, camera)
    if resumable:
        log.info("camera_resume_started", camera=camera.name, session_id=resumable)
        return resume_session(config, resumable, source=staging.dir, cancel=cancel, progress=progress, catalog=catalog)
    info = SourceInfo(kind="camera", label=camera.model, fs_uuid=camera.serial, device=camera.port)
    values = {"label": camera.model, "folder": camera.model, "camera_model": camera.model}
    return import_source(config, staging.dir, description=description or config.cameras.description, template_values=values,
                         source_info=info, catalog=catalog, cancel=cancel, progress=progress, storage_root=storage_root)


def archived_from(catalog: Catalog, camera: Camera) -> set[tuple[str, int]]:
    """(path, size) of the files completed sessions archived from this camera."""
    with catalog.session() as s:
        q = (select(Image.original_import_path, Image.file_size).join(ImportSession, Image.session_id == ImportSession.id)
             .where(*_this_camera(camera), ImportSession.copy_status == "completed", ImportSession.missing.is_(False)))
        return {(p, size) for p, size in s.execute(q) if p is not None}


def find_resumable_camera_session(catalog: Catalog, camera: Camera) -> str | None:
    """The newest unfinished session of this camera (same model and serial)."""
    with catalog.session() as s:
        q = select(ImportSession).where(ImportSession.copy_status.in_(("failed", "in_progress")), *_this_camera(camera))
        for row in s.scalars(q.order_by(ImportSession.created_at.desc())):
            if effective_status(row) == "failed":
                return row.storage_uuid
    return None


def _this_camera(camera: Camera) -> tuple:
    serial = ImportSession.source_fs_uuid == camera.serial if camera.serial else ImportSession.source_fs_uuid.is_(None)
    return ImportSession.source_kind == "camera", ImportSession.source_label == camera.model, serial


def compare_with_camera(result: ImportResult, staged: dict[str, tuple[int, str]]) -> list[str]:
    """Every file read from the camera must be in the archive with the sha256 taken while
    reading it: archived by this session, or recorded as a duplicate of an archived file.
    Returns what is not (empty when everything is)."""
    archived: dict[str, str] = {}
    skipped = result.skipped
    if result.storage_path:
        try:
            m = read_manifest(result.storage_path)
        except ImalinkError as e:
            return [f"the session's manifest cannot be read: {e}"]
        archived.update((e.original_path, e.sha256) for e in m.file_manifest)
        skipped = m.skipped
    archived.update((s.original_path, s.sha256) for s in skipped if s.duplicate_of and s.sha256)
    problems = []
    for rel, (_size, sha) in sorted(staged.items()):
        got = archived.get(rel)
        if got is None:
            problems.append(f"{rel} is not in the archive")
        elif got != sha:
            problems.append(f"{rel} differs from the camera's (sha256 {got[:12]}… archived, {sha[:12]}… read)")
    return problems


def detect_cameras(config: Config, gphoto2: Gphoto2 | None = None) -> list[Camera]:
    """Cameras on USB (``gphoto2 --auto-detect``) and the ``[cameras] ports`` that answer."""
    gp = gphoto2 or Gphoto2(config.cameras.gphoto2)
    found = gp.detect()
    for spec in config.cameras.ports:
        cam = parse_port_spec(spec)
        if cam.port.startswith("disk:") and not os.path.isdir(cam.port[5:]):
            continue
        found.append(cam)
    return found


def parse_port_spec(spec: str) -> Camera:
    """``MODEL@PORT`` from ``[cameras] ports`` (``Directory Browse@disk:/srv/phone``)."""
    model, sep, port = spec.rpartition("@")
    if not sep or not model or not port:
        raise CameraError(camera=spec, message="a [cameras] ports entry is MODEL@PORT, e.g. \"Directory Browse@disk:/srv/phone\"")
    return Camera(model, port)


__all__ = ["Camera", "CameraError", "archived_from", "compare_with_camera", "detect_cameras", "find_resumable_camera_session",
           "import_camera", "parse_port_spec", "staging_dir"]
