"""The web UI served at ``/`` beside the API: dashboard with live progress, the import
dialog, sessions, storage locations, sign-in.

Server-rendered Jinja2 templates with a little plain JavaScript (``static/app.js``) that
follows the API's ``/events`` stream; every asset is in the package and served from
``/static``, so a station without internet shows the same pages. See docs/web.md.
"""

from __future__ import annotations

from typing import Any

from fastapi.staticfiles import StaticFiles

from imalinkd.api.web.access import AUTH_COOKIE, Access, cookie_is_valid


def install_web(app: Any, config: Any, catalog: Any, *, token: str | None, reads_open: bool, trust_local_socket: bool) -> None:
    """Add the web UI's routes and static files to the API ``app`` (after its own routes)."""
    from imalinkd.api.web.routes import HERE, Web, build_router

    web = Web(app, config, catalog, Access(token=token, reads_open=reads_open, trust_local_socket=trust_local_socket))
    app.state.web = web
    app.include_router(build_router(web))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")


def signed_in_browser(request: Any, token: str | None) -> bool:
    """A browser signed in to the web UI may read the API (GET) as a bearer of the token may."""
    return cookie_is_valid(request.cookies.get(AUTH_COOKIE), token)
