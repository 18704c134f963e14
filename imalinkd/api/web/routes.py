"""The web UI's routes: pages that read, forms that act.

Reading pages answer whoever may read the API (see :mod:`.access`); every form posts back
with the CSRF value, and an action also needs a signed-in browser (the API token). The
actions call the JSON API's own handlers or the engine functions the CLI calls, so the
page, the API and the CLI do the same thing.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from imalinkd import __version__
from imalinkd.api.web import access, pages
from imalinkd.api.web.format import FILTERS, GLOBALS
from imalinkd.api.web.locations import BoundedLocations
from imalinkd.errors import ImalinkError, SessionNotFoundError

log = structlog.get_logger(__name__)

HERE = FilePath(__file__).parent
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


class Web:
    """What the pages need from the running API: config, catalog, progress hub, jobs, access."""

    def __init__(self, app: Any, config: Any, catalog: Any, access_: access.Access) -> None:
        self.config, self.catalog, self.access = config, catalog, access_
        self.hub, self.jobs = app.state.hub, app.state.jobs
        self.api = pages.ApiHandlers(app)
        self.locations = BoundedLocations(self.api.get_scan_locations, catalog)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters.update(FILTERS)
        self.templates.env.globals.update(GLOBALS)

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.update(
            version=__version__, signed_in=self.access.signed_in(request), csrf=access.csrf_value(request),
            csrf_field=access.CSRF_FIELD, path=request.url.path,
        )
        response = self.templates.TemplateResponse(request, name, context, status_code=status_code)
        access.set_csrf_cookie(request, response)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response


def _signin_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/signin?next={quote(request.url.path)}", status_code=303)


def _safe_next(value: str | None) -> str:
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def build_router(web: Web) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def read_page(request: Request) -> RedirectResponse | None:
        return None if web.access.may_read(request) else _signin_redirect(request)

    def refused(request: Request, what: str, form: dict) -> HTMLResponse | None:
        """None when the form may act; otherwise the page that says why not."""
        if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
            log.warning("web_form_refused", path=request.url.path, reason="csrf")
            return web.render(request, "message.html", 403, title="Form refused",
                              error="This form did not come from this page (its security value does not match). Reload the page and try again.")
        if not web.access.signed_in(request):
            log.info("web_action_refused", path=request.url.path, reason="not signed in")
            return web.render(request, "signin.html", 401, next=_safe_next(form.get("back")),
                              error=f"{what} needs the API token. Sign in first.")
        return None

    # -- reading pages --

    @router.get("/", response_class=HTMLResponse)
    def dashboard(request: Request) -> Response:
        if (r := read_page(request)) is not None:
            return r
        c, cat = web.config, web.catalog
        locations, complete = web.locations.now()
        return web.render(
            request, "dashboard.html", active=web.hub.active(), waiting=web.hub.waiting(),
            recent=pages.recent_sessions(c, cat), locations=locations, complete=complete,
            jobs=[j.as_json() for j in web.jobs.all()[:5]], default_storage=pages.default_storage_root(c, cat),
            verify_default=c.import_.verify,
        )

    @router.get("/import", response_class=HTMLResponse)
    def import_dialog(request: Request) -> Response:
        if (r := read_page(request)) is not None:
            return r
        return web.render(request, "import.html", default_storage=pages.default_storage_root(web.config, web.catalog),
                          verify_default=web.config.import_.verify, form={})

    @router.get("/ui/storage-check")
    def storage_check(request: Request, path: Annotated[str, Query(max_length=4096)] = "") -> Response:
        if not web.access.may_read(request):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        if "\x00" in path:
            return JSONResponse({"path": "", "accessible": False, "reason": "not a valid path"})
        return JSONResponse(pages.storage_check(web.config, web.catalog, path))

    @router.get("/sessions", response_class=HTMLResponse)
    def sessions(request: Request, status: str = "", q: Annotated[str, Query(max_length=200)] = "",
                 page: Annotated[int, Query(ge=1, le=10**9)] = 1, per_page: Annotated[int, Query(ge=1, le=1000)] = 25) -> Response:
        if (r := read_page(request)) is not None:
            return r
        data = pages.sessions_list(web.config, web.catalog, status=status or None, text=q or None, page=page, per_page=per_page)
        return web.render(request, "sessions.html", **data, statuses=pages.STATUSES, page_sizes=pages.PAGE_SIZES)

    @router.get("/sessions/{ref}", response_class=HTMLResponse)
    def session_page(request: Request, ref: Annotated[str, Path(min_length=1, max_length=255)], page: Annotated[int, Query(ge=1, le=10**9)] = 1) -> Response:
        if (r := read_page(request)) is not None:
            return r
        return _session_page(request, ref, page)

    def _session_page(request: Request, ref: str, page: int = 1, status_code: int = 200, **extra: Any) -> Response:
        try:
            row = pages.load_session(web.catalog, ref)
        except ImalinkError as e:  # unknown, or a prefix that names several
            return web.render(request, "message.html", _status(e) if isinstance(e, SessionNotFoundError) else 400,
                              title="No such session", error=str(e))
        if ref != row.storage_uuid and status_code == 200 and not extra:
            return RedirectResponse(f"/sessions/{row.storage_uuid}", status_code=303)
        detail = pages.session_detail(web.catalog, web.api, row, page)
        return web.render(request, "session.html", status_code, **detail, **extra)

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str) -> Response:
        if (r := read_page(request)) is not None:
            return r
        job = web.jobs.get(job_id)
        if job is None:
            return web.render(request, "message.html", 404, title="No such import",
                              error=f"No import {job_id!r} is known to this daemon (it remembers the last 100 since it started).")
        data = job.as_json()
        return web.render(request, "job.html", job=data, storage=_storage_of(web, data))

    @router.get("/locations", response_class=HTMLResponse)
    def locations(request: Request) -> Response:
        if (r := read_page(request)) is not None:
            return r
        locations, complete = web.locations.now()
        return web.render(request, "locations.html", locations=locations, complete=complete, report=None)

    @router.get("/signin", response_class=HTMLResponse)
    def signin_form(request: Request, next: str = "/") -> Response:
        return web.render(request, "signin.html", next=_safe_next(next), error=None)

    # -- forms --

    @router.post("/signin", response_class=HTMLResponse)
    async def signin(request: Request) -> Response:
        form = dict(await request.form())
        nxt = _safe_next(str(form.get("next") or "/"))
        if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
            return web.render(request, "signin.html", 403, next=nxt, error="This form is out of date; reload the page and sign in again.")
        if web.access.token is None:
            return web.render(request, "signin.html", 503, next=nxt, error="The API token file could not be read; see the daemon's log.")
        if not web.access.check_token(str(form.get("token") or "")):
            log.info("web_signin_refused")
            return web.render(request, "signin.html", 401, next=nxt, error="That is not the API token. It is in the daemon's API token file.")
        response = RedirectResponse(nxt, status_code=303)
        response.set_cookie(access.AUTH_COOKIE, access.signin_cookie_value(web.access.token), max_age=access.SIGNIN_SECONDS,
                            httponly=True, samesite="strict", path="/", secure=request.url.scheme == "https")
        log.info("web_signed_in")
        return response

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        form = dict(await request.form())
        if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
            return web.render(request, "message.html", 403, title="Form refused", error="Reload the page and try again.")
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(access.AUTH_COOKIE, path="/")
        return response

    @router.post("/import", response_class=HTMLResponse)
    async def start_import(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if (r := refused(request, "Starting an import", form)) is not None:
            return r
        return await _run(lambda: _start_import(request, form))

    def _start_import(request: Request, form: dict) -> Response:
        from imalinkd.api.web.actions import start_import

        try:
            outcome = start_import(web, form)
        except (ImalinkError, StarletteHTTPException, ValueError) as e:
            return web.render(request, "import.html", _status(e), error=_detail(e), form=form,
                              default_storage=form.get("storage_root", ""), verify_default=form.get("verify") or web.config.import_.verify)
        if "job_id" in outcome:
            return RedirectResponse(f"/jobs/{outcome['job_id']}", status_code=303)
        return web.render(request, "message.html", title="Files catalogued in place", legacy=outcome)

    @router.post("/sessions/{uuid}/{action}", response_class=HTMLResponse)
    async def session_action(request: Request, uuid: str, action: str) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        names = {"resume": "Resuming a session", "rollback": "Rolling back a session", "verify": "Verifying a session",
                 "update-storage-path": "Updating the storage path"}
        if action not in names:
            return web.render(request, "message.html", 404, title="No such action", error=f"Unknown action {action!r}.")
        if (r := refused(request, names[action], form)) is not None:
            return r
        return await _run(lambda: _session_action(request, uuid, action, form))

    def _session_action(request: Request, uuid: str, action: str, form: dict) -> Response:
        from imalinkd.api.web.actions import session_action

        try:
            outcome = session_action(web, uuid, action, form)
        except (ImalinkError, StarletteHTTPException, ValueError) as e:
            return _session_page(request, uuid, status_code=_status(e), error=_detail(e))
        if outcome.get("job_id"):
            return RedirectResponse(f"/jobs/{outcome['job_id']}", status_code=303)
        if action == "rollback":
            data = pages.sessions_list(web.config, web.catalog, status=None, text=None, page=1, per_page=25)
            return web.render(request, "sessions.html", **data, statuses=pages.STATUSES, page_sizes=pages.PAGE_SIZES,
                              notice=f"Session {outcome['import_session_id']} rolled back"
                                     + (f"; removed {outcome['removed_directory']}." if outcome.get("removed_directory") else "."))
        return _session_page(request, uuid, status_code=200, notice=outcome.get("notice"), report=outcome.get("report"))

    @router.post("/locations/reindex", response_class=HTMLResponse)
    async def reindex(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if (r := refused(request, "Reindexing", form)) is not None:
            return r
        return await _run(lambda: _reindex(request, form))

    def _reindex(request: Request, form: dict) -> Response:
        from imalinkd.api.web.actions import reindex

        try:
            outcome = reindex(web, form)
        except (ImalinkError, StarletteHTTPException, ValueError) as e:
            locations, complete = web.locations.now()
            return web.render(request, "locations.html", _status(e), locations=locations, complete=complete, report=None, error=_detail(e))
        if outcome.get("job_id"):
            return RedirectResponse(f"/jobs/{outcome['job_id']}", status_code=303)
        locations, complete = web.locations.now()
        return web.render(request, "locations.html", locations=locations, complete=complete, report=outcome)

    return router


async def _run(fn):
    """Run a blocking page function in the thread pool (it touches the drives)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn)


def _status(e: Exception) -> int:
    if isinstance(e, StarletteHTTPException):
        return e.status_code
    if isinstance(e, SessionNotFoundError):
        return 404
    return 400 if isinstance(e, ValueError) else 409


def _detail(e: Exception) -> str:
    if isinstance(e, StarletteHTTPException):
        return str(e.detail)
    return str(e)


def _storage_of(web: Web, job: dict) -> dict | None:
    """Drive label and storage id of a finished import's session (for "View Storage Location")."""
    result = job.get("result") or {}
    if job.get("status") != "completed" or job.get("kind") == "reindex" or not result.get("import_session_id"):
        return None
    try:
        status = web.api.get_storage_status(result["import_session_id"])
    except ImalinkError:
        return None
    home = next((c for c in status.get("copies", []) if c.get("home")), {})
    return {"label": home.get("label"), "storage_id": status.get("storage_id")}
