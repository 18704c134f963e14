"""What the web forms do, each through the operation the API or the CLI already uses.

Each function takes the submitted form (plain strings) and returns a plain dict: a
``job_id`` for work that continues in the background (import, resume, verifying reindex),
or the outcome to show. Errors are the engine's own (``ImalinkError``) or the API's
(``HTTPException``), with messages that name the path and the next step.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException

from imalinkd import importer, legacy, paths
from imalinkd.api.app import ReindexRequest, ResumeRequest, RollbackRequest, UpdateStoragePathRequest
from imalinkd.maintenance import verify_sessions

log = structlog.get_logger(__name__)

VERIFY_LEVELS = ("size", "sha256", "paranoid")


def _text(form: dict, key: str, limit: int = 4096) -> str | None:
    value = (form.get(key) or "").strip()
    if not value:
        return None
    if len(value) > limit or "\x00" in value:
        raise ValueError(f"{key.replace('_', ' ')} is too long or not valid text")
    return value


def _checked(form: dict, key: str) -> bool:
    return form.get(key) in ("on", "yes", "true", "1")


def _source(form: dict) -> str:
    """The import's source as the API checks it: absolute, existing, a directory."""
    source = _text(form, "source")
    if source is None:
        raise ValueError("the source path is empty: give the folder or mounted card to import")
    if not os.path.isabs(source):
        raise ValueError(f"source {source} is not an absolute path (it starts with /)")
    if not os.path.exists(source):
        raise StarletteHTTPException(404, f"source {paths.display(source)} does not exist (is the card mounted?)")
    if not os.path.isdir(source):
        raise ValueError(f"source {paths.display(source)} is not a directory")
    return os.path.abspath(source)


def start_import(web: Any, form: dict) -> dict:
    """The import dialog: copy into the storage root (a background job the progress view
    follows), or catalogue in place (done at once; the source stays needed)."""
    source = _source(form)
    description = _text(form, "description", 200)
    storage_root = _text(form, "storage_root")
    verify = form.get("verify") or None
    if verify is not None and verify not in VERIFY_LEVELS:
        raise ValueError(f"unknown verification level {verify!r}; choose one of {', '.join(VERIFY_LEVELS)}")
    if form.get("mode") == "in_place":
        if storage_root and os.path.abspath(storage_root) != os.path.abspath(str(web.config.storage_root or "")):
            raise ValueError("cataloguing in place records the session on the configured storage root; leave the storage path as it is")
        result = legacy.import_in_place(web.config, web.catalog, source, description)
        log.info("web_import_in_place", source=paths.display(source), session_id=result.import_session_id)
        return result.as_json()
    config, catalog, hub = web.config, web.catalog, web.hub
    job = web.jobs.start("import", source, lambda j: importer.import_source(
        config, source, description=description, source_info=importer.SourceInfo(kind="manual"), storage_root=storage_root,
        verify=verify, cancel=j.cancel, progress=hub.publish, catalog=catalog))
    log.info("web_import_started", job_id=job.id, source=paths.display(source))
    return {"job_id": job.id}


def session_action(web: Any, uuid: str, action: str, form: dict) -> dict:
    api = web.api
    if action == "resume":
        return api.post_resume(uuid, ResumeRequest(source=_text(form, "source")))
    if action == "rollback":
        if not _checked(form, "confirm"):
            raise ValueError("rolling back deletes the session's directory and its catalog rows: tick the box to confirm")
        return api.post_rollback(uuid, RollbackRequest(force=_checked(form, "force")))
    if action == "verify":
        report = verify_sessions(web.config, [uuid], catalog=web.catalog)
        web.hub.observe_verify(report)
        data = report.as_json()
        notice = (f"Verified {data['checked']} files: all match their sha256." if report.ok else
                  f"Verified {data['checked']} files: PROBLEMS FOUND (see below).")
        return {"notice": notice, "report": data}
    if action == "update-storage-path":
        new_path = _text(form, "new_path")
        if new_path is None:
            raise ValueError("give the path where the storage root is mounted now")
        out = api.post_update_storage_path(uuid, UpdateStoragePathRequest(new_path=new_path))
        return {"notice": f"Storage path updated: {out.get('root_path')} (storage {out.get('storage_id')})."}
    raise ValueError(f"unknown action {action!r}")


def reindex(web: Any, form: dict) -> dict:
    out = web.api.post_reindex(ReindexRequest(path=_text(form, "path"), verify=_checked(form, "verify")))
    if hasattr(out, "body"):  # a JSONResponse: the verifying reindex's background job
        import json

        return json.loads(out.body)
    return out
