"""The web UI over HTTP against a real server and real imports: pages read the catalog and
the drives, actions need the sign-in cookie and the form's CSRF value, reads follow the
API's rules off loopback, the import dialog's storage check, and docs with no CDN."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from imalinkd.api.web import access
from test_api import TOKEN, Env

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path, tmp_path / "archive").start()
    yield e
    e.close()


def csrf_of(client: httpx.Client, path: str = "/") -> str:
    r = client.get(path)
    assert r.status_code == 200, r.text
    return CSRF_RE.search(r.text).group(1)


def sign_in(client: httpx.Client, token: str = TOKEN) -> httpx.Response:
    return client.post("/signin", data={"csrf_token": csrf_of(client, "/signin"), "token": token, "next": "/sessions"})


def test_dashboard_sessions_and_session_page_show_an_import(env):
    result, files = env.import_card("holiday")
    sid = result.session_uuid
    page = env.client.get("/")
    assert page.status_code == 200 and f'href="/sessions/{sid}"' in page.text
    assert "text/html" in page.headers["content-type"] and "default-src 'self'" in page.headers["content-security-policy"]
    assert str(env.root) in page.text  # the storage root with its health
    listing = env.client.get("/sessions").text
    assert f'href="/sessions/{sid}"' in listing and "Completed" in listing
    # a short reference is sent to the page at the session's UUID (bookmarkable)
    r = env.client.get(f"/sessions/{sid[:8]}")
    assert r.status_code == 303 and r.headers["location"] == f"/sessions/{sid}"
    detail = env.client.get(f"/sessions/{sid}")
    assert detail.status_code == 200
    assert "accessible" in detail.text and str(result.storage_path) in detail.text
    thumbs = re.findall(r'<img src="(/images/\d+/thumbnail)"', detail.text)
    fulls = re.findall(r'href="(/images/\d+/file)" class="open-full"', detail.text)
    assert thumbs and len(fulls) == len(files)
    assert env.client.get(thumbs[0]).headers["content-type"] == "image/jpeg"
    assert env.client.get("/sessions/no-such-session").status_code == 404


def test_sessions_are_filtered_and_paginated(env):
    first, _ = env.import_card("alpha", seed=1)
    second, _ = env.import_card("bravo", seed=2)
    third, _ = env.import_card("charlie", seed=3)
    page2 = env.client.get("/sessions", params={"per_page": 1, "page": 2}).text
    assert second.session_uuid in page2 and third.session_uuid not in page2 and first.session_uuid not in page2
    assert "page 2 of 3" in page2
    only = env.client.get("/sessions", params={"q": "bravo"}).text
    assert second.session_uuid in only and first.session_uuid not in only
    assert third.session_uuid not in env.client.get("/sessions", params={"status": "failed"}).text


def test_an_action_needs_the_csrf_value_and_a_signed_in_browser(env):
    result, _ = env.import_card()
    sid = result.session_uuid
    rollback = f"/sessions/{sid}/rollback"
    # no CSRF value: refused whoever asks
    assert env.client.post(rollback, data={"confirm": "yes", "force": "yes"}).status_code == 403
    # the form's value, but not signed in: the sign-in page, nothing removed
    r = env.client.post(rollback, data={"csrf_token": csrf_of(env.client), "confirm": "yes", "force": "yes"})
    assert r.status_code == 401 and "needs the API token" in r.text
    assert env.client.get(f"/import-sessions/{sid}").status_code == 200
    # a wrong token signs nobody in
    bad = sign_in(env.client, "not-the-token-" + "y" * 20)
    assert bad.status_code == 401 and access.AUTH_COOKIE not in bad.headers.get("set-cookie", "")
    good = sign_in(env.client)
    assert good.status_code == 303 and good.headers["location"] == "/sessions"
    cookie = good.headers["set-cookie"]
    assert access.AUTH_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie
    # another site's page posting the form is refused even with the browser's cookies
    csrf = csrf_of(env.client)
    r = env.client.post(rollback, data={"csrf_token": csrf, "confirm": "yes", "force": "yes"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    # destroying asks for confirmation
    r = env.client.post(rollback, data={"csrf_token": csrf, "force": "yes"})
    assert r.status_code == 400 and "tick the box" in r.text
    r = env.client.post(rollback, data={"csrf_token": csrf, "confirm": "yes", "force": "yes"})
    assert r.status_code == 200 and "rolled back" in r.text
    assert env.client.get(f"/import-sessions/{sid}").status_code == 404
    assert not Path(result.storage_path).exists()


def test_a_forged_or_stale_cookie_is_not_signed_in():
    value = access.signin_cookie_value("a" * 40, now=1_000_000)
    assert access.cookie_is_valid(value, "a" * 40, now=1_000_010)
    assert not access.cookie_is_valid(value, "b" * 40, now=1_000_010)  # the token was replaced
    assert not access.cookie_is_valid(value, "a" * 40, now=1_000_000 + access.SIGNIN_SECONDS + 1)
    assert not access.cookie_is_valid("1000000." + "0" * 64, "a" * 40, now=1_000_010)
    assert not access.cookie_is_valid("garbage", "a" * 40)


def test_off_loopback_pages_and_reads_need_sign_in(tmp_path):
    e = Env(tmp_path, tmp_path / "archive", listen="0.0.0.0:0").start()
    try:
        port = e.server.url.rsplit(":", 1)[1]
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20)
        r = client.get("/sessions")
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")
        assert client.get("/import-sessions").status_code == 401
        assert sign_in(client).status_code == 303
        assert client.get("/sessions").status_code == 200
        assert client.get("/import-sessions").status_code == 200  # the browser may read the API it shows
        # but the cookie is not the token for the JSON API's actions
        assert client.post("/imports", json={"source": str(tmp_path)}).status_code == 401
    finally:
        e.close()


def test_the_storage_check_says_why_a_path_is_not_accessible(env):
    env.import_card()
    ok = env.client.get("/ui/storage-check", params={"path": str(env.root)}).json()
    assert ok["accessible"] is True and ok["storage_id"] and ok["free_bytes"] > 0
    gone = env.client.get("/ui/storage-check", params={"path": str(env.tmp / "unplugged")}).json()
    assert gone["accessible"] is False and "no such directory" in gone["reason"]
    plain = env.tmp / "plain"
    plain.mkdir()
    other = env.client.get("/ui/storage-check", params={"path": str(plain)}).json()
    assert other["accessible"] is False and "init-storage" in other["reason"]


def test_api_docs_load_nothing_from_elsewhere(env):
    for path in ("/docs", "/redoc"):
        page = env.client.get(path)
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert urls and all(u.startswith("/") for u in urls), urls
        assert "cdn." not in page.text and "fonts.googleapis" not in page.text
        for u in urls:
            assert env.client.get(u).status_code == 200, u


def signed_in_client(env) -> httpx.Client:
    client = httpx.Client(base_url=env.server.url, timeout=60)
    assert sign_in(client).status_code == 303
    return client


def wait_for_job_page(client: httpx.Client, location: str) -> str:
    """The job's page once the job has ended (its page no longer says it runs)."""
    import time

    deadline = time.monotonic() + 120
    while True:
        page = client.get(location).text
        if 'data-status="running"' not in page:
            return page
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.1)


def test_import_from_the_form_then_verify_update_path_and_reindex(env):
    env.import_card("first")  # the archive exists
    client = signed_in_client(env)
    card = env.tmp / "card2"
    from test_api import write_card

    write_card(card, shots=2, seed=7)
    r = client.post("/import", data={"csrf_token": csrf_of(client, "/import"), "source": str(card), "storage_root": str(env.root),
                                     "description": "from the form", "verify": "paranoid", "mode": "copy"})
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")
    page = wait_for_job_page(client, r.headers["location"])
    assert "The source directory is no longer needed." in page
    sid = re.search(r'href="/sessions/([0-9a-f-]{36})" id="session-link"', page).group(1)
    assert f"<code>{env.client.get(f'/import-sessions/{sid}/storage-status').json()['storage_id']}</code>" in page

    csrf = csrf_of(client, f"/sessions/{sid}")
    r = client.post(f"/sessions/{sid}/verify", data={"csrf_token": csrf})
    assert r.status_code == 200 and "all match their sha256" in r.text
    r = client.post(f"/sessions/{sid}/update-storage-path", data={"csrf_token": csrf, "new_path": str(env.tmp)})
    assert r.status_code == 409 and "page-error" in r.text  # not the session's storage: said, nothing changed
    r = client.post(f"/sessions/{sid}/update-storage-path", data={"csrf_token": csrf, "new_path": str(env.root)})
    assert r.status_code == 200 and "Storage path updated" in r.text

    r = client.post("/locations/reindex", data={"csrf_token": csrf_of(client, "/locations"), "path": str(env.root)})
    assert r.status_code == 200 and 'id="reindex-report"' in r.text and "2 sessions on the drive" in r.text


def test_a_bad_source_is_refused_in_the_dialog_and_nothing_starts(env):
    client = signed_in_client(env)
    csrf = csrf_of(client, "/import")
    r = client.post("/import", data={"csrf_token": csrf, "source": str(env.tmp / "no-card"), "mode": "copy"})
    assert r.status_code == 404 and "does not exist" in r.text
    r = client.post("/import", data={"csrf_token": csrf, "source": "relative/path", "mode": "copy"})
    assert r.status_code == 400 and "not an absolute path" in r.text
    assert env.client.get("/imports").json() == []


def test_cataloguing_in_place_says_the_source_is_still_needed(env):
    env.import_card("first")
    client = signed_in_client(env)
    from test_api import write_card

    write_card(env.tmp / "shelf", shots=2, seed=9)
    r = client.post("/import", data={"csrf_token": csrf_of(client, "/import"), "source": str(env.tmp / "shelf"), "mode": "in_place"})
    assert r.status_code == 200 and "still holds the only copy and is still needed" in r.text
    assert "no longer needed" not in r.text


def test_resume_of_a_failed_session_from_its_page(env):
    import threading

    from imalinkd.importer import import_source
    from test_api import write_card

    card = env.tmp / "card"
    write_card(card, shots=3, big=3)
    stop = threading.Event()
    result = import_source(env.config, card, catalog=env.catalog, cancel=stop,
                           progress=lambda p: stop.set() if p.phase == "file_copying" and p.files_done >= 1 else None)
    assert result.copy_status == "failed"
    client = signed_in_client(env)
    page = client.get(f"/sessions/{result.session_uuid}").text
    assert 'id="resume-form"' in page
    r = client.post(f"/sessions/{result.session_uuid}/resume", data={"csrf_token": CSRF_RE.search(page).group(1)})
    assert r.status_code == 303
    wait_for_job_page(client, r.headers["location"])
    assert env.client.get(f"/import-sessions/{result.session_uuid}").json()["copy_status"] == "completed"


def test_the_dashboard_lists_cards_waiting_for_an_archive(env):
    env.hub.set_waiting_source(lambda: [{"kind": "card", "name": "EOS_DIGITAL", "mount_point": "/media/EOS_DIGITAL"}])
    page = env.client.get("/").text
    assert "EOS_DIGITAL" in page and "plug in the archive drive" in page


def test_a_drive_that_does_not_answer_leaves_the_storage_list_to_the_catalog(env):
    import threading
    import time

    from imalinkd.api.web.locations import BoundedLocations

    env.import_card()
    hung = threading.Event()
    calls = []

    def scan_that_hangs():
        calls.append(1)
        hung.wait()  # a look at a mount that does not answer
        return []

    try:
        locations = BoundedLocations(scan_that_hangs, env.catalog, wait=0.05)
        roots, complete = locations.now()
        assert not complete and [r["path"] for r in roots] == [str(env.root)] and roots[0]["unchecked"]
        roots, complete = locations.now()  # the same scan is waited for, no second thread
        assert not complete
        deadline = time.monotonic() + 30
        while not calls and time.monotonic() < deadline:
            hung.wait(0.01)
        assert len(calls) == 1
    finally:
        hung.set()
