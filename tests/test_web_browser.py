"""The web UI in a real headless browser (Debian's chromium driven by Playwright) against
the real daemon (`python -m imalinkd run`): an action refused without the token, sign-in,
an import started from the dialog whose progress bars move and end in the seed's success
message, the session page and a full image opened from its thumbnail, a failed session
rolled back, the API docs rendered offline, and not one request leaving loopback.

The browser is the system's chromium (never one downloaded by Playwright). Outside CI the
test is skipped when chromium or Playwright is missing; under CI=true it fails instead.
Set SCREENSHOT_DIR=DIR to keep screenshots of the dashboard and a session page
(docs/screenshots.py makes the ones the README shows)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from imalinkd.config import load_config
from imalinkd.importer import import_source
from imalinkd.storage import init_storage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 120_000


def _browser_or_skip():
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem, sync_playwright = "Playwright for Python is not installed (pip install '.[test]')", None
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_playwright


# --- what the test imports ------------------------------------------------------------------------


def photo(path: Path, i: int) -> None:
    """A photo-like JPEG: a coloured gradient with grain and a few shapes (a few hundred kB)."""
    w, h = 960, 640
    base = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    tint = Image.new("RGB", (w, h), ((60 + 47 * i) % 256, (120 + 29 * i) % 256, (200 + 13 * i) % 256))
    img = Image.blend(base, tint, 0.55)
    img = Image.blend(img, Image.effect_noise((w, h), 40).convert("RGB"), 0.12)
    d = ImageDraw.Draw(img)
    d.ellipse((100 + 20 * i, 120, 420 + 20 * i, 440), fill=((30 * i) % 256, 90, 160))
    d.rectangle((560, 200 - 5 * i, 860, 520), outline=(255, 255, 255), width=6)
    img.save(path, "JPEG", quality=90)


def make_card(root: Path, photos: int, clips: int, clip_mib: int = 4) -> Path:
    d = root / "DCIM" / "100CANON"
    d.mkdir(parents=True)
    for i in range(photos):
        photo(d / f"IMG_{i + 1:04d}.JPG", i)
    for i in range(clips):
        (d / f"MVI_{i + 1:04d}.MP4").write_bytes(os.urandom(clip_mib * 1024 * 1024))
    return root


def failed_session(config, card: Path) -> str:
    """A real import stopped mid-copy (as SIGTERM stops one): a failed, resumable session."""
    stop = threading.Event()

    def on_progress(p) -> None:
        if p.phase == "file_copying" and p.files_done >= 1:
            stop.set()

    result = import_source(config, card, description="stopped early", cancel=stop, progress=on_progress)
    assert result.copy_status == "failed", result.as_json()
    return result.session_uuid


# --- the daemon -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def station(tmp_path):
    """Config, a failed session made before the start, and the running daemon."""
    port = free_port()
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    cfg = tmp_path / "imalinkd.toml"
    cfg.write_text(f"""
[catalog]
url = "sqlite:///{tmp_path / 'catalog.db'}"

[storage]
root = "{tmp_path / 'archive'}"

[api]
listen = "127.0.0.1:{port}"

[daemon]
state_dir = "{tmp_path / 'state'}"
mount_paths = ["{tmp_path / 'mounts'}/*"]  # leave other tests' cards and archives alone

[import]
thumbnail_size = 320
""")
    failed = failed_session(load_config(str(cfg)), make_card(tmp_path / "old-card", photos=2, clips=8, clip_mib=1))
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "PYTHONPATH": str(REPO)}
    env.pop("IMALINKD_CONFIG", None)
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imalinkd", "--config", str(cfg), "run"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        ready = False
        while not ready:
            try:
                ready = b"READY=1" in notify.recv(4096).split(b"\n")
            except socket.timeout:
                break
        assert ready, f"no READY=1; log:\n{(tmp_path / 'daemon.log').read_text()[-3000:]}"
        yield {"url": f"http://127.0.0.1:{port}", "tmp": tmp_path, "failed": failed,
               "token": (tmp_path / "state" / "api-token").read_text().strip()}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()
        log.close()


@pytest.fixture
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# The copy bar's values as the page sets them, recorded in the page before any script runs.
RECORD_BARS = """
new MutationObserver((changes) => {
  for (const c of changes) {
    const t = c.target;
    if (t.tagName === 'PROGRESS' && t.classList.contains('bar-copy') && t.closest('#imports'))
      window.imalinkdBar(Number(t.getAttribute('value')));
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['value']});
"""


def screenshot(page, name: str) -> None:
    where = os.environ.get("SCREENSHOT_DIR")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / name), full_page=True)


def test_import_from_the_browser_then_session_thumbnail_and_rollback(station, browser):
    url, tmp, failed, token = station["url"], station["tmp"], station["failed"], station["token"]
    api = httpx.Client(base_url=url, timeout=30)
    requests: list[str] = []
    bars: list[float] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.on("request", lambda r: requests.append(r.url))
    context.expose_function("imalinkdBar", lambda v: bars.append(v))
    context.add_init_script(RECORD_BARS)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    problems: list[str] = []  # script errors and anything the Content-Security-Policy blocked
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    failures: list[tuple[str, int]] = []  # answers of 400 and more (the refused action's 401 is expected)
    context.on("response", lambda r: failures.append((r.url, r.status)) if r.status >= 400 else None)

    # the dashboard, open on loopback
    page.goto(url + "/")
    assert page.locator(f'.sessions-table a[href="/sessions/{failed}"]').count() == 1
    assert "Failed" in page.locator(f'tr[data-session="{failed}"]').inner_text()

    # an action without the token is refused, and nothing is removed
    page.goto(f"{url}/sessions/{failed}")
    page.check("#rollback-confirm")
    page.click("#rollback-button")
    page.wait_for_selector("#signin-form")
    assert "needs the API token" in page.inner_text("#page-error")
    assert api.get(f"/import-sessions/{failed}").json()["copy_status"] == "failed"

    # sign in with the token: back on the session, signed in
    page.fill("#signin-token", token)
    page.click("#signin-submit")
    page.wait_for_url(f"{url}/sessions/{failed}")
    assert page.inner_text(".who .badge") == "signed in"
    cookie = next(c for c in context.cookies() if c["name"] == "imalinkd_auth")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]

    # the import dialog: the storage path is checked as it is typed
    card = make_card(tmp / "card", photos=12, clips=10)
    page.goto(url + "/")
    page.click("#open-import")
    page.fill("#import-storage", str(tmp / "unplugged-drive"))
    page.wait_for_selector("#storage-state[data-accessible=no]")
    assert "Storage path not accessible" in page.inner_text("#storage-state")
    page.fill("#import-storage", str(tmp / "archive"))
    page.wait_for_selector("#storage-state[data-accessible=yes]")
    page.fill("#import-source", str(card))
    page.fill("input[name=description]", "browser")
    page.click("#import-start")
    page.wait_for_selector(f'#imports .import-progress[data-source="{card}"]')
    # the progress view follows the import; once it ends the page says how
    page.wait_for_url(f"{url}/jobs/*")
    success = page.inner_text("#success-message")
    assert "Files have been copied to storage. The source directory is no longer needed." in success
    assert any(0 < v < 100 for v in bars), f"the copy bar never showed a value between 0 and 100: {bars}"
    assert bars == sorted(bars), f"the copy bar went backwards: {bars}"

    # "View Storage Location": the session's path now, the drive's label and storage id
    page.click("#storage-info summary")
    location = page.inner_text("#storage-location")
    assert location.startswith(str(tmp / "archive")) and Path(location).is_dir()
    page.click("#session-link")
    page.wait_for_url(f"{url}/sessions/*")
    sid = page.url.rsplit("/", 1)[1]
    assert api.get(f"/import-sessions/{sid}").json()["copy_status"] == "completed"
    assert page.inner_text("#storage-accessible") == "accessible"

    # the thumbnail grid opens the full image
    thumbs = page.locator('.thumbs a.open-full[data-type="image/jpeg"] img')
    assert thumbs.count() == 12
    page.wait_for_function("() => [...document.querySelectorAll('.thumbs img')].every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "session.png")
    thumbs.first.click()
    page.wait_for_function("() => document.querySelector('#viewer').open && document.querySelector('#viewer-img').complete"
                           " && document.querySelector('#viewer-img').naturalWidth === 960")
    page.click("#viewer-close")

    page.goto(url + "/")
    screenshot(page, "dashboard.png")

    # the failed session, rolled back after confirming
    page.goto(f"{url}/sessions/{failed}")
    failed_dir = api.get(f"/import-sessions/{failed}").json()["storage_path"]
    assert failed_dir and Path(failed_dir).is_dir()
    page.check("#rollback-confirm")
    page.click("#rollback-button")
    page.wait_for_selector(".notice")
    assert f"Session {failed} rolled back" in page.inner_text(".notice")
    assert api.get(f"/import-sessions/{failed}").status_code == 404
    assert not Path(failed_dir).exists()

    assert not problems, problems
    assert failures == [(f"{url}/sessions/{failed}/rollback", 401)], failures

    # the API docs render with no network beyond this daemon
    page.goto(url + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "imalinkd" in page.inner_text(".swagger-ui .info .title")

    context.close()
    outside = [u for u in requests if not (u.startswith(url + "/") or u.startswith("data:"))]
    assert requests and not outside, outside
