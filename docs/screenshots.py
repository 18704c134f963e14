"""Screenshots of the web UI for the docs: the real daemon on a demo archive in a
temporary directory, a demo card imported from the import dialog, and Debian's chromium
(headless, through Playwright).

    python docs/screenshots.py docs/img

writes dashboard.png (taken while the import runs, its progress bars part-way) and
session.png (the imported session with its thumbnails)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from test_web_browser import CHROMIUM, CHROMIUM_ARGS, free_port, make_card  # noqa: E402


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imalinkd-demo-") as d:
        tmp = Path(d)
        port = free_port()
        cfg = tmp / "imalinkd.toml"
        cfg.write_text(f'[catalog]\nurl = "sqlite:///{tmp}/catalog.db"\n[storage]\nroot = "{tmp}/photo-archive"\n'
                       f'[api]\nlisten = "127.0.0.1:{port}"\n[daemon]\nstate_dir = "{tmp}/state"\nmount_paths = ["{tmp}/mounts/*"]\n'
                       '[import]\nthumbnail_size = 320\nverify = "paranoid"\n')
        card = make_card(tmp / "EOS_DIGITAL", photos=18, clips=40, clip_mib=8)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg), "init-storage", str(tmp / "photo-archive"),
                        "--label", "Photo archive"], env=env, check=True, stdout=subprocess.DEVNULL)
        proc = subprocess.Popen([sys.executable, "-m", "imalinkd", "--config", str(cfg), "run", "--log-format", "json"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            token_file = tmp / "state" / "api-token"
            deadline = time.monotonic() + 60
            while not token_file.exists() or not _answers(port):
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.2)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.set_default_timeout(300_000)
                page.goto(url + "/signin?next=/")
                page.fill("#signin-token", token_file.read_text().strip())
                page.click("#signin-submit")
                page.click("#open-import")
                page.fill("#import-source", str(card))
                page.fill("input[name=description]", "Holiday in Lofoten")
                page.wait_for_selector("#storage-state[data-accessible=yes]")
                page.click("#import-start")
                page.wait_for_function("() => { const c = document.querySelector('#imports .import-progress');"
                                       " return c && Number(c.dataset.percent) > 25; }")
                page.screenshot(path=str(out / "dashboard.png"))
                page.wait_for_url(url + "/jobs/*")
                page.click("#storage-info summary")
                page.click("#session-link")
                page.wait_for_function("() => [...document.querySelectorAll('.thumbs img')].every(i => i.complete && i.naturalWidth > 0)")
                page.screenshot(path=str(out / "session.png"))
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
