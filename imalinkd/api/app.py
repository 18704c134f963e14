"""The HTTP API (FastAPI): the seed's endpoints against live storage, import control, live
progress as server-sent events, and Prometheus metrics.

Every answer is computed from the drives as they are now: a session's directory is
resolved at request time (``locate``), so an unplugged archive makes its files 404 with the
seed's "Image file not accessible. Check storage connection." and its storage status
``storage_accessible: false``; nothing is cached across requests.

Safety, whatever the catalog or a manifest says:

- ``/images/{id}/file`` and ``/thumbnail`` open files only below the session's directory on
  a live storage root, walking each path component with ``O_NOFOLLOW`` from the directory
  (no ``..``, no symlink anywhere below the session directory), and check the opened file's
  real path is still inside it;
- bad ids, paths and bodies are 4xx with a JSON ``{"detail": …}``; an unexpected error is a
  500 with a JSON body and no traceback (the traceback goes to the log);
- mutating endpoints need the bearer token (see :mod:`imalinkd.api.auth`); read-only ones
  are open when the API listens on loopback or a Unix socket, and need the token too when
  it listens anywhere else.

Handlers that touch the disk or the catalog are plain ``def`` functions: FastAPI runs them
in its thread pool, so a slow drive never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import json
import mimetypes
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal

import anyio
import structlog
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse

from imalinkd import __version__, paths, redact, verdict, session_list
from imalinkd.api import auth, web
from imalinkd.api.hosts import HostCheck, host_policy
from imalinkd.api.hub import ProgressHub, seed_phase
from imalinkd.api.metrics import app_registry
from imalinkd.catalog import Image, ImportSession, Photo, SkippedFile, find_session
from imalinkd.errors import (
    AmbiguousSessionError,
    ConfigError,
    ImalinkError,
    SessionBusyError,
    SessionNotFoundError,
    SessionStateError,
    SourceError,
    StorageError,
    UsageError,
)

log = structlog.get_logger(__name__)

NOT_ACCESSIBLE = "Image file not accessible. Check storage connection."
MAX_DB_ID = 2**63 - 1
MAX_PATH = 4096
SSE_KEEPALIVE_SECONDS = 15.0
STATUSES = ("not_started", "in_progress", "completed", "failed")

# Types mimetypes does not know; kept in a private table, the global one is not touched.
_TYPES = mimetypes.MimeTypes()
for _ext, _type in {
    ".cr2": "image/x-canon-cr2", ".cr3": "image/x-canon-cr3", ".crw": "image/x-canon-crw", ".nef": "image/x-nikon-nef",
    ".nrw": "image/x-nikon-nrw", ".arw": "image/x-sony-arw", ".srf": "image/x-sony-srf", ".sr2": "image/x-sony-sr2",
    ".dng": "image/x-adobe-dng", ".raf": "image/x-fuji-raf", ".orf": "image/x-olympus-orf", ".rw2": "image/x-panasonic-rw2",
    ".pef": "image/x-pentax-pef", ".srw": "image/x-samsung-srw", ".x3f": "image/x-sigma-x3f", ".3fr": "image/x-hasselblad-3fr",
    ".iiq": "image/x-phaseone-iiq", ".heic": "image/heic", ".heif": "image/heif", ".hif": "image/heif",
    ".avif": "image/avif", ".webp": "image/webp", ".mts": "video/mp2t", ".m2ts": "video/mp2t", ".mp4": "video/mp4",
    ".mov": "video/quicktime", ".avi": "video/x-msvideo", ".xmp": "application/rdf+xml", ".thm": "image/jpeg",
}.items():
    _TYPES.add_type(_type, _ext)


def content_type(name: str) -> str:
    return _TYPES.guess_type(paths.display(name).lower())[0] or "application/octet-stream"


# --- request bodies ----------------------------------------------------------------------------


def _check_path_text(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_PATH:
        raise ValueError(f"{what} must be 1 to {MAX_PATH} characters")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL")
    try:
        os.fsencode(value)
    except UnicodeError:
        raise ValueError(f"{what} is not a valid file name") from None
    return value


def _check_text(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImportRequest(_Body):
    source: str = Field(description="absolute path of the folder or mounted card to import (only read)")
    description: str | None = Field(None, max_length=200, description="session description (goes into the directory name)")
    verify: Literal["size", "sha256", "paranoid"] | None = None
    thumbnails: bool | None = None

    @field_validator("source")
    @classmethod
    def _valid_source(cls, v: str) -> str:
        return _check_path_text(v, "source")

    @field_validator("description")
    @classmethod
    def _valid_description(cls, v: str | None) -> str | None:
        return _check_text(v, "description")


class UpdateStoragePathRequest(_Body):
    new_path: str = Field(description="where the storage root (or the session directory) is now")

    @field_validator("new_path")
    @classmethod
    def _valid_new_path(cls, v: str) -> str:
        return _check_path_text(v, "new_path")


class RollbackRequest(_Body):
    force: bool = Field(False, description="also roll back a completed session (deletes archived files)")


class ResumeRequest(_Body):
    source: str | None = Field(None, description="where the source is now, when it moved")

    @field_validator("source")
    @classmethod
    def _valid_source(cls, v: str | None) -> str | None:
        return _check_path_text(v, "source")


class ReindexRequest(_Body):
    path: str | None = Field(None, description="a mount point or storage root; all reachable roots when left out")
    verify: bool = Field(False, description="also re-hash every file against its manifest")

    @field_validator("path")
    @classmethod
    def _valid_path(cls, v: str | None) -> str | None:
        return _check_path_text(v, "path")


SessionRef = Annotated[str, Path(min_length=1, max_length=255, description="catalog id, session UUID, its 8-character prefix, or the directory name")]
ImageId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="catalog id of the image")]


# --- background jobs -------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    kind: str  # import | resume
    target: str  # source path or session uuid
    status: str = "running"  # running | completed | failed | error
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: dict | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def as_json(self) -> dict:
        return {
            "job_id": self.id, "kind": self.kind, "target": self.target, "status": self.status,
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
            "result": self.result, "error": self.error, "status_url": f"/imports/{self.id}",
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Jobs:
    """Imports and resumes started through the API, each in its own thread (the engine is
    synchronous). One job per source or session at a time; the last 100 are remembered."""

    KEEP = 100

    def __init__(self, hub: ProgressHub) -> None:
        self.hub = hub
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def start(self, kind: str, target: str, work: Callable[[Job], Any]) -> Job:
        with self._lock:
            for j in self._jobs.values():
                if j.status == "running" and j.target == target:
                    raise SessionBusyError(session=target)
            job = Job(id=uuid.uuid4().hex, kind=kind, target=target)
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.status != "running"]
            for k in finished[: max(0, len(self._jobs) - self.KEEP)]:
                del self._jobs[k]
        job.thread = threading.Thread(target=self._run, args=(job, work), name=f"api {kind} {job.id[:8]}", daemon=True)
        job.thread.start()
        return job

    def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        structlog.contextvars.clear_contextvars()
        try:
            result = work(job)
            job.result = result.as_json()
            if job.kind == "reindex":  # a ReindexReport: nothing to publish as an import
                job.status = "completed" if result.ok else "failed"
                job.error = None if result.ok else (f"{len(result.rejected)} item(s) rejected, "
                                                    f"{len(result.damaged)} damaged file(s): see result")
                return
            job.status = "completed" if result.copy_status == "completed" else "failed"
            job.error = result.error
            self.hub.publish_result(result)
        except ImalinkError as e:  # refused before it started: no archive, no room, bad source
            job.status, job.error = "failed", str(e)
            log.error("api_job_failed", job_id=job.id, kind=job.kind, error=str(e))
            self.hub.publish_error(job.target, str(e))
        except Exception as e:  # the error boundary of a job: one line, traceback at debug
            job.status, job.error = "error", f"internal error: {type(e).__name__}"
            log.error("api_job_crashed", job_id=job.id, kind=job.kind, error=f"{type(e).__name__}: {e}")
            log.debug("api_job_crashed_traceback", job_id=job.id, exc_info=True)
            self.hub.publish_error(job.target, job.error)
        finally:
            job.finished_at = time.time()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at, reverse=True)

    def cancel_all(self, wait: float = 0.0) -> None:
        """Ask every running job to stop (the engine parks the file in flight), waiting up to
        ``wait`` seconds in total for them."""
        jobs = [j for j in self.all() if j.status == "running"]
        for j in jobs:
            j.cancel.set()
        deadline = time.monotonic() + wait
        for j in jobs:
            if j.thread is not None:
                j.thread.join(max(0.0, deadline - time.monotonic()))


# --- opening archived files safely -------------------------------------------------------------


class Refused(Exception):
    """A file that exists but must not be served (symlink, not a regular file, outside)."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_below(base: str, rel: str) -> int:
    """Open the regular file ``base/rel`` read-only, following no symlink below ``base``.

    Each directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a
    symlink (or a ``..``, refused before) anywhere below ``base`` cannot lead outside it,
    even if the tree changes while we walk it. Raises ``Refused`` or ``OSError``."""
    try:
        paths.check_relative(rel)
    except paths.UnsafePathError as e:
        raise Refused(str(e)) from None
    parts = rel.split("/")
    dfd = os.open(base, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=dfd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(f"{paths.display(rel)}: {part!r} is not a real directory") from None
                raise
            os.close(dfd)
            dfd = nfd
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Refused(f"{paths.display(rel)} is a symlink") from None
            raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{paths.display(rel)} is not a regular file")
        real = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None
        base_real = os.path.realpath(base)
        if real is not None and not real.startswith(base_real.rstrip("/") + "/"):
            raise Refused(f"{paths.display(rel)} resolves outside {base_real}")
    except BaseException:
        os.close(fd)
        raise
    return fd


class ArchiveFileResponse(FileResponse):
    """``FileResponse`` (with its HTTP Range support) whose file is (re)opened only through
    :func:`open_below`, and refused if it is no longer the file that was checked."""

    def __init__(self, base: str, rel: str, st: os.stat_result, **kwargs: Any) -> None:
        super().__init__(os.path.join(base, rel), stat_result=st, **kwargs)
        self._base, self._rel, self._ident = base, rel, (st.st_dev, st.st_ino)

    def _open(self) -> Any:
        fd = open_below(self._base, self._rel)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._ident:
            os.close(fd)
            raise Refused(f"{paths.display(self._rel)} changed while being served")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def _open_file(self):  # type: ignore[override]
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def opened():
            f = anyio.wrap_file(await anyio.to_thread.run_sync(self._open))
            try:
                yield f
            finally:
                with anyio.CancelScope(shield=True):
                    await f.aclose()

        return opened()

    async def _handle_simple(self, send, send_header_only, send_pathsend):  # type: ignore[override]
        # never hand the server a path to open by itself
        await super()._handle_simple(send, send_header_only, False)


# --- the app -------------------------------------------------------------------------------------


def _status_of(e: ImalinkError) -> int:
    if isinstance(e, SessionNotFoundError):
        return 404
    if isinstance(e, (AmbiguousSessionError, UsageError, ConfigError, SourceError)):
        return 400
    if isinstance(e, (SessionBusyError, SessionStateError, StorageError)):
        return 409
    return 409


class _CatchAll:
    """Outermost guard: an unexpected exception becomes a 500 JSON answer with no
    traceback (the traceback is logged), instead of the server's default."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as e:
            log.error("api_internal_error", path=scope.get("path"), method=scope.get("method"), error=f"{type(e).__name__}: {e}")
            log.debug("api_internal_error_traceback", exc_info=True)
            if not started:
                body = json.dumps({"detail": "internal error; see the daemon's log"}).encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})


def create_app(config, catalog, hub: ProgressHub | None = None, *, token: str | None = None,
               trust_local_socket: bool | None = None) -> FastAPI:
    """The API app for ``config`` over ``catalog``.

    ``token``: the bearer token for mutating endpoints; by default read from (or generated
    into) ``config.api_token_file``. When that fails the API still serves reads, and
    mutating endpoints answer 503. ``trust_local_socket``: requests come through a Unix
    socket only the service user can open (mode 0600), so they need no token; by default
    true when ``[api] listen`` is ``unix:…``."""
    from imalinkd import importer, locate
    from imalinkd.netaddr import parse_listen

    hub = hub or ProgressHub()
    listen = parse_listen(config.api.listen) if config.api.listen else None
    if trust_local_socket is None:
        trust_local_socket = bool(listen and listen.unix_path)
    reads_open = listen is None or listen.is_loopback
    if token is None:
        try:
            token = auth.ensure_token(config.api_token_file)
        except OSError as e:
            log.error("api_token_unavailable", path=str(config.api_token_file), error=e.strerror or str(e))
            token = None
    redact.remember(token)

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the package, not a CDN
    app = FastAPIOffline(
        title="imalinkd",
        version=__version__,
        description="Photo-ingest daemon API: import sessions on live storage, archived files, live progress, metrics.",
    )
    app.state.hub = hub
    app.state.jobs = jobs = Jobs(hub)
    app.state.closing = closing = threading.Event()
    registry = app_registry(config, catalog, hub.metrics)

    # -- errors --

    @app.exception_handler(ImalinkError)
    async def _imalink_error(_request: Request, e: ImalinkError) -> JSONResponse:
        return JSONResponse({"detail": str(e), "error": type(e).__name__}, status_code=_status_of(e))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, e: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")} for err in e.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=getattr(e, "headers", None))

    app.add_middleware(_CatchAll)
    # Outermost: a request naming a foreign host is refused before anything else runs.
    app.add_middleware(HostCheck, policy=host_policy(listen, config.api.allowed_hosts) if listen else None)

    # -- auth --

    def _authorised(request: Request) -> bool:
        return trust_local_socket or auth.token_matches(auth.bearer_token(request.headers.get("authorization")), token)

    def require_token(request: Request) -> None:
        if trust_local_socket:
            return
        if token is None:
            raise StarletteHTTPException(503, "the API token file could not be read or created; see the daemon's log")
        if not _authorised(request):
            raise StarletteHTTPException(401, "a valid 'Authorization: Bearer <token>' header is needed (the token is in the API token file)",
                                         headers={"WWW-Authenticate": "Bearer"})

    def require_read(request: Request) -> None:
        if not reads_open and not web.signed_in_browser(request, token):
            require_token(request)

    Read = Depends(require_read)
    Write = Depends(require_token)

    # -- helpers --

    def load_session(ref: str) -> ImportSession:
        with catalog.session() as s:
            return find_session(s, ref)

    def live_session_dir(row: ImportSession) -> str | None:
        return locate.session_path(config, catalog, row)

    def session_body(row: ImportSession, sdir: str | None) -> dict:
        body = importer.session_json(row, sdir, verdict.session_fields(config, catalog, row))
        with catalog.session() as s:
            n_images = s.scalar(select(func.count(Image.id)).where(Image.session_id == row.id)) or 0
            n_photos = s.scalar(select(func.count(Photo.id)).where(Photo.session_id == row.id)) or 0
            n_skipped = s.scalar(select(func.count(SkippedFile.id)).where(SkippedFile.session_id == row.id)) or 0
        live = hub.latest(row.storage_uuid)
        status = body["copy_status"]
        if live and live.get("type") == "progress":
            phase = live["phase"]
        else:
            phase = {"completed": "Completed", "failed": "Failed", "not_started": "Not Started"}.get(status, seed_phase("file_copying"))
        body.update(
            phase=phase,
            counts={"images": n_images, "photos": n_photos, "skipped": n_skipped,
                    "duplicates_skipped": row.duplicates_skipped, "planned_files": row.planned_files,
                    "planned_bytes": row.planned_bytes},
            storage_accessible=sdir is not None,
            progress=live if live and live.get("type") == "progress" else None,
        )
        return body

    def image_item(img: Image, photo: Photo | None) -> dict:
        media: dict | None = None
        if img.media_json:
            try:
                media = json.loads(img.media_json)
            except ValueError:
                media = None
        if media is None and photo is not None:
            media = {k: v for k, v in (
                ("taken_at", photo.taken_at), ("camera_make", photo.camera_make), ("camera_model", photo.camera_model),
                ("camera_serial", photo.camera_serial), ("lens_model", photo.lens_model),
                ("orientation", photo.orientation), ("width", photo.width), ("height", photo.height),
            ) if v is not None}
            if photo.gps_lat is not None and photo.gps_lon is not None:
                media["gps"] = {k: v for k, v in (("lat", photo.gps_lat), ("lon", photo.gps_lon), ("alt", photo.gps_alt)) if v is not None}
        return {
            "id": img.id,
            "photo_id": img.photo_id,
            "storage_relative_path": paths.display(img.storage_relative_path),
            "original_import_path": paths.display(img.original_import_path) if img.original_import_path else None,
            "file_size": img.file_size,
            "sha256": img.sha256,
            "content_type": content_type(img.storage_relative_path),
            "copied_at": img.copied_at.isoformat().replace("+00:00", "Z") if img.copied_at else None,
            "media": media or {},
            "media_error": img.media_error,
            "size_mismatch": bool(img.size_mismatch),
            "file_url": f"/images/{img.id}/file",
            "thumbnail_url": f"/images/{img.id}/thumbnail" if photo is not None and photo.thumbnail_path else None,
        }

    def load_image(image_id: int) -> tuple[Image, Photo | None, ImportSession]:
        with catalog.session() as s:
            img = s.get(Image, image_id)
            if img is None:
                raise StarletteHTTPException(404, f"No image with id {image_id}")
            photo = s.get(Photo, img.photo_id) if img.photo_id is not None else None
            row = s.get(ImportSession, img.session_id)
            return img, photo, row

    def serve_below(base: str, rel: str, image_id: int, kind: str, name: str, media_type: str) -> Response:
        try:
            fd = open_below(base, rel)
        except Refused as e:
            log.warning("api_file_refused", image_id=image_id, kind=kind, reason=str(e))
            raise StarletteHTTPException(404, NOT_ACCESSIBLE) from None
        except OSError as e:
            log.info("api_file_not_accessible", image_id=image_id, kind=kind, error=e.strerror or str(e))
            raise StarletteHTTPException(404, NOT_ACCESSIBLE) from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return ArchiveFileResponse(base, rel, st, media_type=media_type, filename=paths.display(os.path.basename(name)),
                                   content_disposition_type="inline")

    # -- sessions --

    @app.get("/import-sessions", tags=["sessions"], dependencies=[Read], summary="List import sessions, newest first")
    def list_sessions(
        response: Response,
        status: Annotated[Literal["not_started", "in_progress", "completed", "failed"] | None, Query(description="only sessions with this (effective) status")] = None,
        limit: Annotated[int | None, Query(ge=1, le=10000)] = None,
        offset: Annotated[int, Query(ge=0, le=MAX_DB_ID)] = 0,
    ) -> list[dict]:
        page = session_list.page(catalog, status, limit, offset)
        where = session_list.locations(config, catalog, page.rows)
        response.headers["X-Total-Count"] = str(page.total)
        return [importer.session_json(r, where[r.id], verdict.session_fields(config, catalog, r)) for r in page.rows]

    @app.get("/import-sessions/{session_id}", tags=["sessions"], dependencies=[Read], summary="One session with counts and phase")
    def get_session(session_id: SessionRef) -> dict:
        row = load_session(session_id)
        return session_body(row, live_session_dir(row))

    @app.get("/import-sessions/{session_id}/storage-status", tags=["storage"], dependencies=[Read],
             summary="Is the session's storage reachable now, and how many of its files")
    def get_storage_status(session_id: SessionRef) -> dict:
        return locate.storage_status(config, catalog, load_session(session_id))

    @app.post("/import-sessions/{session_id}/update-storage-path", tags=["storage"], dependencies=[Write],
              summary="Tell the catalog where the session's archive is mounted now")
    def post_update_storage_path(session_id: SessionRef, body: UpdateStoragePathRequest) -> dict:
        row = load_session(session_id)
        return locate.update_storage_path(catalog, row.storage_uuid, body.new_path)

    @app.get("/import-sessions/{session_id}/images", tags=["sessions"], dependencies=[Read], summary="The session's archived files")
    def list_images(
        session_id: SessionRef,
        limit: Annotated[int | None, Query(ge=1, le=100000)] = None,
        offset: Annotated[int, Query(ge=0, le=MAX_DB_ID)] = 0,
    ) -> dict:
        row = load_session(session_id)
        with catalog.session() as s:
            total = s.scalar(select(func.count(Image.id)).where(Image.session_id == row.id)) or 0
            q = select(Image, Photo).outerjoin(Photo, Image.photo_id == Photo.id).where(Image.session_id == row.id).order_by(Image.id).offset(offset)
            if limit:
                q = q.limit(limit)
            items = [image_item(img, photo) for img, photo in s.execute(q)]
        return {"import_session_id": row.storage_uuid, "id": row.id, "total": total, "offset": offset, "limit": limit, "items": items}

    @app.post("/import-sessions/{session_id}/resume", tags=["control"], dependencies=[Write], status_code=202,
              summary="Finish a failed session in the background (committed files are kept)")
    def post_resume(session_id: SessionRef, body: ResumeRequest | None = None) -> dict:
        row = load_session(session_id)
        st = importer.effective_status(row)
        if st == "in_progress":
            raise SessionBusyError(session=row.storage_uuid)
        if st == "completed":
            raise SessionStateError(session=row.storage_uuid, status=st, message="there is nothing to resume")
        src = body.source if body else None
        job = jobs.start("resume", row.storage_uuid, lambda j: importer.resume_session(
            config, row.storage_uuid, source=src, cancel=j.cancel, progress=hub.publish, catalog=catalog))
        return job.as_json()

    @app.post("/import-sessions/{session_id}/rollback", tags=["control"], dependencies=[Write],
              summary="Remove a failed session's directory and catalog rows")
    def post_rollback(session_id: SessionRef, body: RollbackRequest | None = None) -> dict:
        row = load_session(session_id)
        return importer.rollback_session(config, row.storage_uuid, force=bool(body and body.force), catalog=catalog)

    # -- images --

    @app.get("/images/{image_id}/file", tags=["images"], dependencies=[Read], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}, "description": "the archived file (Range requests supported)"},
                        206: {"description": "part of the file"}, 404: {"description": NOT_ACCESSIBLE}},
             summary="The archived file's bytes")
    def get_image_file(image_id: ImageId) -> Response:
        img, _photo, row = load_image(image_id)
        if row is None or not row.copy_files:
            # a legacy session's files are on its source, not in an archive: not served
            raise StarletteHTTPException(404, NOT_ACCESSIBLE)
        sdir = live_session_dir(row)
        if sdir is None:
            raise StarletteHTTPException(404, NOT_ACCESSIBLE)
        return serve_below(os.path.join(sdir, "files"), img.storage_relative_path, image_id, "file",
                           img.storage_relative_path, content_type(img.storage_relative_path))

    @app.get("/images/{image_id}/thumbnail", tags=["images"], dependencies=[Read], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "the JPEG thumbnail"}, 404: {"description": "no thumbnail"}},
             summary="The photo's thumbnail")
    def get_thumbnail(image_id: ImageId) -> Response:
        img, photo, row = load_image(image_id)
        if photo is None or not photo.thumbnail_path or row is None:
            raise StarletteHTTPException(404, f"No thumbnail for image {image_id}")
        sdir = live_session_dir(row)
        if sdir is None:
            raise StarletteHTTPException(404, NOT_ACCESSIBLE)
        return serve_below(sdir, photo.thumbnail_path, image_id, "thumbnail", photo.thumbnail_path, content_type(photo.thumbnail_path))

    # HEAD answers like GET without the body (for clients probing size and type)
    app.add_api_route("/images/{image_id}/file", get_image_file, methods=["HEAD"], include_in_schema=False, dependencies=[Read])
    app.add_api_route("/images/{image_id}/thumbnail", get_thumbnail, methods=["HEAD"], include_in_schema=False, dependencies=[Read])

    # -- storage --

    @app.get("/storage/scan-locations", tags=["storage"], dependencies=[Read], summary="Storage roots reachable now")
    def get_scan_locations() -> list[dict]:
        return locate.scan_locations(config, catalog)

    @app.post("/storage/reindex", tags=["control"], dependencies=[Write],
              summary="Reconcile the catalog with the archive drives (from their manifests)",
              responses={202: {"description": "with verify: the job re-hashing every file, started in the background"}})
    def post_reindex(body: ReindexRequest | None = None) -> dict:
        from imalinkd import reindex

        body = body or ReindexRequest()
        if body.path is not None and not os.path.isdir(body.path):
            raise StarletteHTTPException(400, f"{paths.display(body.path)} is not a directory")

        def run(_job=None):
            if body.path is not None:
                return reindex.reindex_path(config, catalog, body.path, verify=body.verify)
            return reindex.reindex_all(config, catalog, verify=body.verify)

        if not body.verify:
            return run().as_json()
        # re-hashing every file takes as long as reading the drive (hours for a large one):
        # a background job, whose report (the damaged files) outlives any client's timeout
        running = [j for j in jobs.all() if j.kind == "reindex" and j.status == "running"]
        if running:
            raise ImalinkError(f"a verifying reindex started through the API is still running: {running[0].as_json()['status_url']}")
        return JSONResponse(jobs.start("reindex", body.path or "every reachable root", run).as_json(), status_code=202)

    # -- imports --

    @app.post("/imports", tags=["control"], dependencies=[Write], status_code=202,
              summary="Start importing a folder or mounted card in the background")
    def post_import(body: ImportRequest) -> dict:
        source = body.source
        if not os.path.isabs(source):
            raise StarletteHTTPException(400, "source must be an absolute path")
        if not os.path.exists(source):
            raise StarletteHTTPException(404, f"source {paths.display(source)} does not exist")
        if not os.path.isdir(source):
            raise StarletteHTTPException(400, f"source {paths.display(source)} is not a directory")
        source = os.path.abspath(source)
        info = importer.SourceInfo(kind="manual")
        job = jobs.start("import", source, lambda j: importer.import_source(
            config, source, description=body.description, source_info=info, verify=body.verify,
            thumbnails=body.thumbnails, cancel=j.cancel, progress=hub.publish, catalog=catalog))
        log.info("api_import_started", job_id=job.id, source=paths.display(source))
        return job.as_json()

    @app.get("/imports", tags=["control"], dependencies=[Read], summary="Imports and resumes started through the API")
    def list_jobs() -> list[dict]:
        return [j.as_json() for j in jobs.all()]

    @app.get("/imports/{job_id}", tags=["control"], dependencies=[Read], summary="One import job")
    def get_job(job_id: Annotated[str, Path(min_length=1, max_length=64)]) -> dict:
        job = jobs.get(job_id)
        if job is None:
            raise StarletteHTTPException(404, f"No import job {job_id!r}")
        return job.as_json()

    # -- live progress and metrics --

    @app.get("/events", tags=["progress"], dependencies=[Read], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
             summary="Live import progress as server-sent events")
    async def get_events(
        once: Annotated[bool, Query(description="send the current state and end (for scripts and tests)")] = False,
    ) -> StreamingResponse:
        sub = hub.subscribe(asyncio.get_running_loop())

        async def stream():
            try:
                yield "retry: 3000\n\n"
                yield _sse("hello", {"type": "hello", "version": __version__, "active": hub.active()})
                for m in hub.active():
                    yield _sse("progress", m)
                if once:
                    return
                last = time.monotonic()
                while not closing.is_set():
                    message = await sub.get(0.5)
                    if message is not None:
                        yield _sse(message.get("type", "message"), message)
                        last = time.monotonic()
                    elif time.monotonic() - last > SSE_KEEPALIVE_SECONDS:
                        yield ": keepalive\n\n"
                        last = time.monotonic()
            finally:
                sub.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/metrics", tags=["metrics"], dependencies=[Read], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
             summary="Prometheus metrics")
    def get_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/scrub", tags=["storage"], dependencies=[Read],
             summary="Scrubs: each drive's progress, the count of files by last result, the files found not intact")
    def get_scrub() -> dict:
        from imalinkd.scrub.findings import scrub_status

        return scrub_status(catalog)

    @app.get("/health", tags=["metrics"], summary="Liveness: the API answers")
    def get_health() -> dict:
        return {"status": "ok", "version": __version__, "imports_active": len(hub.active())}

    web.install_web(app, config, catalog, token=token, reads_open=reads_open, trust_local_socket=trust_local_socket)
    return app


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"
