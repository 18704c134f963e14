"""The API served by ``imalinkd run`` itself: the daemon as a subprocess with a private
config, started with a notify socket we bind (READY=1 means the API answers), driven over
HTTP on a loopback port, and stopped with SIGTERM."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imalinkd.storage import init_storage
from test_api import read_events, write_card

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon(tmp_path):
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
""")
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "PYTHONPATH": str(REPO)}
    env.pop("IMALINKD_CONFIG", None)
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imalinkd", "--config", str(cfg), "run"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                ready = b"READY=1" in notify.recv(4096).split(b"\n")
            except socket.timeout:
                break
        assert ready, f"no READY=1; log:\n{(tmp_path / 'daemon.log').read_text()[-2000:]}"
        yield proc, f"http://127.0.0.1:{port}", tmp_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()
        log.close()


def test_daemon_serves_the_api_streams_progress_and_stops_cleanly(daemon):
    proc, url, tmp = daemon
    client = httpx.Client(base_url=url, timeout=20)
    assert client.get("/import-sessions").status_code == 200
    token = (tmp / "state" / "api-token").read_text().strip()
    assert oct((tmp / "state" / "api-token").stat().st_mode & 0o777) == "0o600"
    auth = {"Authorization": f"Bearer {token}"}

    card = tmp / "card"
    files = write_card(card, shots=3, big=4)
    events: list = []
    ready, stop = threading.Event(), threading.Event()
    reader = threading.Thread(target=read_events, args=(url, events, ready, stop), daemon=True)
    reader.start()
    assert ready.wait(10)
    assert client.post("/imports", json={"source": str(card)}).status_code == 401
    r = client.post("/imports", json={"source": str(card), "description": "daemon api"}, headers=auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while (job := client.get(f"/imports/{job_id}").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["status"] == "completed", job
    reader.join(20)
    phases = {d["phase"] for k, d in events if k == "progress"}
    assert {"Database Import", "File Copying"} <= phases
    assert any(k == "completed" and "source is no longer needed" in d["message"] for k, d in events)

    sid = job["result"]["import_session_id"]
    assert client.get(f"/import-sessions/{sid}").json()["copy_status"] == "completed"
    st = client.get(f"/import-sessions/{sid}/storage-status").json()
    assert st["storage_accessible"] is True and st["total_files"] == len(files) == st["files_accessible"]
    items = client.get(f"/import-sessions/{sid}/images").json()["items"]
    assert len(items) == len(files)
    for it in items[:3]:
        r = client.get(f"/images/{it['id']}/file")
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == it["sha256"]
    big = next(it for it in items if it["file_size"] > 1_000_000)
    r = client.get(f"/images/{big['id']}/file", headers={"Range": "bytes=1000000-1000099"})
    data = (card / big["original_import_path"]).read_bytes()
    assert r.status_code == 206 and r.content == data[1000000:1000100]
    assert client.get("/images/..%2f..%2fetc%2fpasswd/file").status_code in (404, 422)
    here = [loc for loc in client.get("/storage/scan-locations").json() if loc["path"] == str(tmp / "archive")]
    assert here and here[0]["session_count"] == 1
    samples = {s.name: s.value for fam in text_string_to_metric_families(client.get("/metrics").text) for s in fam.samples
               if not s.labels or s.labels.get("status") == "completed"}
    assert samples["imalinkd_copied_files_total"] == len(files)
    assert samples["imalinkd_imports_total"] == 1 and samples["imalinkd_sessions"] >= 1
    client.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0  # a stop that waited for the open streams would never come
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=1)
