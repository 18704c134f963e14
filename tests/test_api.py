"""The HTTP API against a real uvicorn server on a loopback port (``start_api_server``), over
archives filled by real imports: every endpoint, Range requests, tokens, traversal and
symlink attempts, live progress as server-sent events, Prometheus metrics, and an
unplugged ext4 archive."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
import structlog
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from imalinkd.api import ProgressHub, start_api_server
from imalinkd.api.app import NOT_ACCESSIBLE
from imalinkd.catalog import Catalog, Image, ImportSession, Photo
from imalinkd.config import parse_config
from imalinkd.importer import import_source
from imalinkd.storage import init_storage
from media_factory import write_jpeg
from mounts import ext4_image, umount

TOKEN = "test-token-" + "x" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --- set-up ------------------------------------------------------------------------------------


def make_config(tmp: Path, root: Path, listen: str = "127.0.0.1:0", **api):
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp / 'catalog.db'}"},
        "storage": {"root": str(root)},
        "daemon": {"state_dir": str(tmp / "state")},
        "api": {"listen": listen, **api},
        "import": {"thumbnail_size": 64},
    })


def write_card(base: Path, shots: int = 3, big: int = 0, seed: int = 0) -> dict[str, str]:
    """A small DCIM tree: JPEGs (real, with thumbnails made from them), a RAW-ish file, a
    name that is not UTF-8, and ``big`` larger files so the copy takes a moment.
    Returns relative path -> sha256."""
    d = base / "DCIM" / "100TEST"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(shots):
        write_jpeg(d / f"IMG_{seed:02d}{i:02d}.JPG", 64 + i, 48)
        (d / f"IMG_{seed:02d}{i:02d}.CR3").write_bytes(os.urandom(3000 + i))
    (d / os.fsdecode(b"odd_\xff_name.JPG")).write_bytes(os.urandom(1000))
    for i in range(big):
        (d / f"MVI_{seed:02d}{i:02d}.MP4").write_bytes(os.urandom(4 * 1024 * 1024))
    out = {}
    for p in base.rglob("*"):
        if p.is_file():
            out[p.relative_to(base).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Env:
    def __init__(self, tmp: Path, root: Path, **kw) -> None:
        self.tmp = tmp
        self.root = root
        init_storage(root)  # as 'imalinkd init-storage' does
        self.config = make_config(tmp, root, **kw)
        self.catalog = Catalog.open(self.config)
        self.hub = ProgressHub()
        self.server = None

    def start(self, token: str | None = TOKEN) -> "Env":
        self.server = start_api_server(self.config, self.catalog, self.hub, token=token)
        self.client = httpx.Client(base_url=self.server.url, timeout=20)
        return self

    def import_card(self, name: str = "card", **kw):
        card = self.tmp / name
        files = write_card(card, **kw)
        result = import_source(self.config, card, description=name, catalog=self.catalog)
        assert result.copy_status == "completed", result.as_json()
        return result, files

    def close(self) -> None:
        if self.server is not None:
            self.client.close()
            self.server.stop()
        self.catalog.close()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path, tmp_path / "archive").start()
    yield e
    e.close()


@pytest.fixture
def imported(env):
    result, files = env.import_card()
    return env, result, files


def items_of(env, sid) -> list[dict]:
    r = env.client.get(f"/import-sessions/{sid}/images")
    assert r.status_code == 200, r.text
    return r.json()["items"]


# --- sessions ----------------------------------------------------------------------------------


def test_sessions_are_listed_and_found_by_id_uuid_prefix_and_directory_name(imported):
    env, result, files = imported
    listed = env.client.get("/import-sessions").json()
    assert [s["import_session_id"] for s in listed] == [result.session_uuid]
    assert listed[0]["copy_status"] == "completed" and listed[0]["storage_path"] == result.storage_path
    assert env.client.get("/import-sessions", params={"status": "completed"}).json() == listed
    assert env.client.get("/import-sessions", params={"status": "failed"}).json() == []
    assert env.client.get("/import-sessions", params={"status": "bogus"}).status_code == 422
    r = env.client.get("/import-sessions", params={"limit": 1, "offset": 1})
    assert r.json() == [] and r.headers["X-Total-Count"] == "1"  # a page past the end, with the total
    assert env.client.get("/import-sessions").headers["X-Total-Count"] == "1"
    row_id = listed[0]["id"]
    for ref in (str(row_id), result.session_uuid, result.session_uuid[:8], result.storage_directory_name):
        r = env.client.get(f"/import-sessions/{ref}")
        assert r.status_code == 200, (ref, r.text)
        body = r.json()
        assert body["import_session_id"] == result.session_uuid
        assert body["phase"] == "Completed" and body["storage_accessible"] is True
        assert body["counts"]["images"] == len(files) and body["counts"]["photos"] >= 4


def test_unknown_session_is_404_json(env):
    for ref in ("999999", "deadbeef", "nope", "0" * 200):
        r = env.client.get(f"/import-sessions/{ref}")
        assert r.status_code == 404 and "No import session" in r.json()["detail"]
        assert env.client.get(f"/import-sessions/{ref}/storage-status").status_code == 404


def test_storage_status_and_scan_locations(imported):
    env, result, files = imported
    st = env.client.get(f"/import-sessions/{result.session_uuid}/storage-status").json()
    assert st["storage_accessible"] is True and st["total_files"] == len(files) == st["files_accessible"]
    assert st["storage_path"] == result.storage_path
    locs = env.client.get("/storage/scan-locations").json()
    here = [loc for loc in locs if loc["path"] == str(env.root)]
    assert here and result.storage_directory_name in here[0]["sessions"] and here[0]["session_count"] == 1


def test_images_list_every_file_with_paths_hashes_and_media(imported):
    env, result, files = imported
    items = items_of(env, result.session_uuid)
    assert len(items) == len(files)
    by_path = {it["storage_relative_path"]: it for it in items}
    shown = {os.fsencode(p).decode("utf-8", "backslashreplace"): sha for p, sha in files.items()}
    assert {p: it["sha256"] for p, it in by_path.items()} == shown
    odd = by_path["DCIM/100TEST/odd_\\xff_name.JPG"]
    assert odd["original_import_path"] == "DCIM/100TEST/odd_\\xff_name.JPG"
    jpg = by_path["DCIM/100TEST/IMG_0001.JPG"]
    assert jpg["content_type"] == "image/jpeg" and jpg["media"].get("width") == 65
    assert jpg["file_size"] == (env.tmp / "card" / "DCIM/100TEST/IMG_0001.JPG").stat().st_size
    page = env.client.get(f"/import-sessions/{result.session_uuid}/images", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == len(files) and [i["id"] for i in page["items"]] == [i["id"] for i in items[1:3]]


# --- files --------------------------------------------------------------------------------------


def test_files_stream_with_content_type_and_range_requests(imported):
    env, result, files = imported
    for it in items_of(env, result.session_uuid):
        r = env.client.get(f"/images/{it['id']}/file")
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == it["sha256"]
        assert r.headers["content-type"].split(";")[0] == it["content_type"]
        assert r.headers["accept-ranges"] == "bytes"
    cr3 = next(it for it in items_of(env, result.session_uuid) if it["storage_relative_path"].endswith("IMG_0001.CR3"))
    data = (env.tmp / "card" / "DCIM/100TEST/IMG_0001.CR3").read_bytes()
    assert cr3["content_type"] == "image/x-canon-cr3"
    r = env.client.get(f"/images/{cr3['id']}/file", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    r = env.client.get(f"/images/{cr3['id']}/file", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = env.client.get(f"/images/{cr3['id']}/file", headers={"Range": "bytes=2990-"})
    assert r.status_code == 206 and r.content == data[2990:]
    r = env.client.get(f"/images/{cr3['id']}/file", headers={"Range": f"bytes={len(data) + 5}-"})
    assert r.status_code == 416
    r = env.client.head(f"/images/{cr3['id']}/file")
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(data)


def test_thumbnails_are_served_and_missing_ones_are_404(imported):
    env, result, _ = imported
    items = items_of(env, result.session_uuid)
    with_thumb = [it for it in items if it["thumbnail_url"]]
    assert with_thumb, "the import made no thumbnails"
    r = env.client.get(with_thumb[0]["thumbnail_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    no_thumb = [it for it in items if not it["thumbnail_url"]]
    assert no_thumb
    r = env.client.get(f"/images/{no_thumb[0]['id']}/thumbnail")
    assert r.status_code == 404 and "thumbnail" in r.json()["detail"]


def test_bad_and_unknown_image_ids_are_4xx_json(env):
    for path in ("/images/abc/file", "/images/-1/file", "/images/0/file", "/images/99999999999999999999999/file",
                 "/images/1.5/thumbnail"):
        r = env.client.get(path)
        assert r.status_code == 422 and isinstance(r.json()["detail"], list), path
    r = env.client.get("/images/999999999/file")
    assert r.status_code == 404 and r.json() == {"detail": "No image with id 999999999"}


# --- traversal and symlinks ---------------------------------------------------------------------


def test_encoded_traversal_in_the_id_is_refused(env):
    for path in ("/images/..%2f..%2fetc%2fpasswd/file", "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
                 "/images/..%252f..%252fetc%252fpasswd/file", "/images/1/..%2f..%2f..%2fetc%2fpasswd"):
        r = env.client.get(path)
        assert r.status_code in (404, 422), path
        assert b"root:" not in r.content


def test_catalog_row_pointing_outside_is_refused(imported):
    env, result, _ = imported
    item = items_of(env, result.session_uuid)[0]
    for bad in ("../../etc/passwd", "../../../../../../etc/passwd", "/etc/passwd", "DCIM/../../metadata.json", "DCIM//x"):
        with env.catalog.session() as s:
            s.execute(update(Image).where(Image.id == item["id"]).values(storage_relative_path=bad))
        r = env.client.get(f"/images/{item['id']}/file")
        assert r.status_code == 404 and r.json()["detail"] == NOT_ACCESSIBLE, bad
    with env.catalog.session() as s:
        photo = s.scalars(select(Photo).where(Photo.thumbnail_path.is_not(None))).first()
        s.execute(update(Photo).where(Photo.id == photo.id).values(thumbnail_path="../../../../etc/passwd"))
        image_id = s.scalars(select(Image.id).where(Image.photo_id == photo.id)).first()
    r = env.client.get(f"/images/{image_id}/thumbnail")
    assert r.status_code == 404 and b"root:" not in r.content


def test_symlinks_planted_in_the_archive_are_not_followed(imported, tmp_path):
    env, result, _ = imported
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0 secret\n")
    items = {it["storage_relative_path"]: it for it in items_of(env, result.session_uuid)}
    files_dir = Path(result.storage_path) / "files"
    # a file replaced by a symlink to something outside
    target = files_dir / "DCIM/100TEST/IMG_0000.CR3"
    target.unlink()
    target.symlink_to(secret)
    r = env.client.get(f"/images/{items['DCIM/100TEST/IMG_0000.CR3']['id']}/file")
    assert r.status_code == 404 and b"secret" not in r.content
    # a directory replaced by a symlink to a copy elsewhere
    elsewhere = tmp_path / "elsewhere"
    (files_dir / "DCIM/100TEST").rename(elsewhere)
    (files_dir / "DCIM/100TEST").symlink_to(elsewhere)
    r = env.client.get(f"/images/{items['DCIM/100TEST/IMG_0001.CR3']['id']}/file")
    assert r.status_code == 404 and r.json()["detail"] == NOT_ACCESSIBLE
    # a FIFO where a file was: refused without blocking
    (files_dir / "DCIM/100TEST").unlink()
    elsewhere.rename(files_dir / "DCIM/100TEST")
    fifo = files_dir / "DCIM/100TEST/IMG_0002.CR3"
    fifo.unlink()
    os.mkfifo(fifo)
    r = env.client.get(f"/images/{items['DCIM/100TEST/IMG_0002.CR3']['id']}/file")
    assert r.status_code == 404
    assert env.client.get(f"/images/{items['DCIM/100TEST/IMG_0001.CR3']['id']}/file").status_code == 200


# --- auth and control ---------------------------------------------------------------------------


def test_mutating_endpoints_refuse_a_missing_or_wrong_token(imported):
    env, result, _ = imported
    sid = result.session_uuid
    calls = [("post", f"/import-sessions/{sid}/rollback", {"force": True}),
             ("post", f"/import-sessions/{sid}/resume", {}),
             ("post", f"/import-sessions/{sid}/update-storage-path", {"new_path": str(env.root)}),
             ("post", "/imports", {"source": str(env.tmp / "card")}),
             ("post", "/storage/reindex", {})]
    for method, path, body in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic " + TOKEN}):
            r = env.client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    assert env.client.get(f"/import-sessions/{sid}").status_code == 200  # nothing was rolled back


def test_token_file_is_created_private_and_reused(tmp_path):
    e = Env(tmp_path, tmp_path / "archive").start(token=None)
    try:
        token_file = tmp_path / "state" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        r = e.client.post("/storage/reindex", json={}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    finally:
        e.close()
    e2 = Env(tmp_path, tmp_path / "archive").start(token=None)
    try:
        assert (tmp_path / "state" / "api-token").read_text().strip() == token
    finally:
        e2.close()


def test_update_storage_path_accepts_the_root_and_refuses_elsewhere(imported, tmp_path):
    env, result, _ = imported
    sid = result.session_uuid
    r = env.client.post(f"/import-sessions/{sid}/update-storage-path", json={"new_path": str(env.root)}, headers=AUTH)
    assert r.status_code == 200 and r.json()["success"] is True and r.json()["storage_path"] == result.storage_path
    r = env.client.post(f"/import-sessions/{sid}/update-storage-path", json={"new_path": str(tmp_path)}, headers=AUTH)
    assert r.status_code == 409 and "no storage marker" in r.json()["detail"]
    for body in ({}, {"new_path": ""}, {"new_path": "a\x00b"}, {"new_path": "x", "extra": 1}, {"new_path": 5}):
        r = env.client.post(f"/import-sessions/{sid}/update-storage-path", json=body, headers=AUTH)
        assert r.status_code == 422, body
    r = env.client.post(f"/import-sessions/{sid}/update-storage-path", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422


def test_resume_of_a_completed_session_is_409_and_rollback_needs_force(imported):
    env, result, _ = imported
    sid = result.session_uuid
    r = env.client.post(f"/import-sessions/{sid}/resume", json={}, headers=AUTH)
    assert r.status_code == 409 and "nothing to resume" in r.json()["detail"]
    r = env.client.post(f"/import-sessions/{sid}/rollback", json={}, headers=AUTH)
    assert r.status_code == 409 and "--force" in r.json()["detail"]
    r = env.client.post(f"/import-sessions/{sid}/rollback", json={"force": True}, headers=AUTH)
    assert r.status_code == 200 and r.json()["removed_directory"] == result.storage_path
    assert not Path(result.storage_path).exists()
    assert env.client.get(f"/import-sessions/{sid}").status_code == 404


def test_resume_of_a_failed_session_finishes_it(imported):
    env, result, files = imported
    with env.catalog.session() as s:
        s.execute(update(ImportSession).where(ImportSession.storage_uuid == result.session_uuid).values(copy_status="failed", copy_completed_at=None))
    r = env.client.post(f"/import-sessions/{result.session_uuid[:8]}/resume", json={}, headers=AUTH)
    assert r.status_code == 202, r.text
    job = wait_job(env, r.json()["job_id"])
    assert job["status"] == "completed" and job["result"]["copy_status"] == "completed"
    assert env.client.get(f"/import-sessions/{result.session_uuid}").json()["copy_status"] == "completed"


def test_import_of_a_missing_or_relative_path_is_refused(env):
    r = env.client.post("/imports", json={"source": str(env.tmp / "nothing-here")}, headers=AUTH)
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]
    r = env.client.post("/imports", json={"source": "relative/dir"}, headers=AUTH)
    assert r.status_code == 400
    (env.tmp / "a-file").write_text("x")
    assert env.client.post("/imports", json={"source": str(env.tmp / "a-file")}, headers=AUTH).status_code == 400
    for body in ({}, {"source": ""}, {"source": "/x", "verify": "maybe"}, {"source": "/\x00"}, {"source": ["/"]}):
        assert env.client.post("/imports", json=body, headers=AUTH).status_code == 422, body
    assert env.client.get("/imports/nope").status_code == 404


def test_reindex_endpoint_reports(imported):
    env, result, _ = imported
    r = env.client.post("/storage/reindex", json={"path": str(env.root)}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    r = env.client.post("/storage/reindex", json={"path": str(env.tmp / "missing")}, headers=AUTH)
    assert r.status_code == 400


def test_a_verifying_reindex_is_a_job_whose_report_names_the_damage(imported):
    env, result, _ = imported
    victim = next(p for p in (Path(result.storage_path) / "files").rglob("*") if p.is_file())
    with open(victim, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))  # same size, other bytes: only a re-hash sees it
    r = env.client.post("/storage/reindex", json={"path": str(env.root), "verify": True}, headers=AUTH)
    assert r.status_code == 202, r.text
    job = wait_job(env, r.json()["job_id"])
    assert job["kind"] == "reindex" and job["status"] == "failed" and "1 damaged file" in job["error"]
    assert [d["path"] for d in job["result"]["damaged"]] == [str(victim)]
    assert job["result"]["roots"][0]["verified_files"] == result.total_files


def test_one_verifying_reindex_at_a_time(imported, monkeypatch):
    import imalinkd.reindex as reindex

    env, _, _ = imported
    release = threading.Event()
    real = reindex.reindex_path

    def slow(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(reindex, "reindex_path", slow)
    body = {"path": str(env.root), "verify": True}
    first = env.client.post("/storage/reindex", json=body, headers=AUTH)
    assert first.status_code == 202
    second = env.client.post("/storage/reindex", json=body, headers=AUTH)
    assert second.status_code == 409 and first.json()["status_url"] in second.json()["detail"]
    release.set()
    assert wait_job(env, first.json()["job_id"])["status"] == "completed"


def wait_job(env, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = env.client.get(f"/imports/{job_id}").json()
        if job["status"] != "running":
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running after {timeout}s")


# --- live progress ----------------------------------------------------------------------------


def read_events(url: str, out: list, ready: threading.Event, stop: threading.Event) -> None:
    with httpx.Client(timeout=httpx.Timeout(5, read=60)) as c, c.stream("GET", url + "/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
                if event == "hello":
                    ready.set()
                if event in ("result",) or stop.is_set():
                    return


def test_sse_stream_shows_both_phases_and_the_source_no_longer_needed_message(env):
    card = env.tmp / "card"
    write_card(card, shots=4, big=6)
    events: list = []
    ready, stop = threading.Event(), threading.Event()
    reader = threading.Thread(target=read_events, args=(env.server.url, events, ready, stop), daemon=True)
    reader.start()
    assert ready.wait(10), "no hello event"
    r = env.client.post("/imports", json={"source": str(card), "description": "sse test"}, headers=AUTH)
    assert r.status_code == 202, r.text
    job = wait_job(env, r.json()["job_id"])
    assert job["status"] == "completed", job
    reader.join(20)
    stop.set()
    kinds = [k for k, _ in events]
    progress = [d for k, d in events if k == "progress"]
    phases = {d["phase"] for d in progress}
    assert {"Database Import", "File Copying"} <= phases, phases
    copying = [d for d in progress if d["phase"] == "File Copying" and d["engine_phase"] == "file_copying"]
    assert copying and all(d["total_files"] == len(list(card.rglob("*.*"))) for d in copying)
    assert {"current_file", "copied_files", "total_files", "copied_bytes", "total_bytes", "mb_per_s", "eta_seconds"} <= set(copying[-1])
    done = [d for k, d in events if k == "completed"]
    assert done and done[0]["message"] == "files have been copied to storage; the source is no longer needed"
    assert done[0]["storage_location"] == job["result"]["storage_path"]
    assert kinds.index("completed") < kinds.index("result")
    final = [d for k, d in events if k == "result"][0]
    assert final["status"] == "completed" and final["storage_location"] == job["result"]["storage_path"]
    assert "source is no longer needed" in final["message"]


def test_events_once_returns_the_current_state(env):
    r = env.client.get("/events", params={"once": "true"})
    assert r.status_code == 200 and "event: hello" in r.text


# --- metrics ----------------------------------------------------------------------------------


def metrics(env) -> dict[str, list]:
    r = env.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(r.text):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(m, name, **labels) -> float:
    return sum(s.value for s in m.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_count_an_api_import(env):
    card = env.tmp / "card"
    files = write_card(card, shots=2)
    (card / "DCIM" / "link.JPG").symlink_to("/etc/passwd")
    before = metrics(env)
    assert value(before, "imalinkd_imports_total", status="completed") == 0
    r = env.client.post("/imports", json={"source": str(card)}, headers=AUTH)
    assert wait_job(env, r.json()["job_id"])["status"] == "completed"
    m = metrics(env)
    total = sum((card / p).stat().st_size for p in files)
    assert value(m, "imalinkd_copied_bytes_total") == total
    assert value(m, "imalinkd_copied_files_total") == len(files)
    assert value(m, "imalinkd_verifications_total", result="ok") == len(files)
    assert value(m, "imalinkd_imports_total", status="completed") == 1
    assert value(m, "imalinkd_file_failures_total", reason="symlink") == 1
    assert value(m, "imalinkd_sessions", status="completed") == 1
    assert value(m, "imalinkd_catalog_images") == len(files)
    assert value(m, "imalinkd_storage_roots_reachable") >= 1
    marker = json.loads((env.root / "config.json").read_text())
    assert value(m, "imalinkd_storage_free_bytes", storage_id=marker["storage_id"]) > 0
    assert 0 < value(m, "imalinkd_storage_utilisation_ratio", storage_id=marker["storage_id"]) < 1
    assert "imalinkd_copy_throughput_mb_per_second" in m
    env.hub.observe_latency(0.3)
    assert value(metrics(env), "imalinkd_event_to_session_seconds_count") == 1
    # the same card again: nothing new, no session
    r = env.client.post("/imports", json={"source": str(card)}, headers=AUTH)
    assert wait_job(env, r.json()["job_id"])["status"] == "completed"
    assert value(metrics(env), "imalinkd_imports_total", status="nothing_new") == 1


def test_a_failed_import_is_counted_by_cause(env):
    card = env.tmp / "card"
    write_card(card, shots=1)
    (env.root / "config.json").unlink()  # the archive is not there
    r = env.client.post("/imports", json={"source": str(card)}, headers=AUTH)
    job = wait_job(env, r.json()["job_id"])
    assert job["status"] in ("failed", "error") and job["error"]
    assert value(metrics(env), "imalinkd_imports_total", status="failed") == 1


# --- errors -------------------------------------------------------------------------------------


def test_unexpected_errors_are_500_json_without_traceback(env, monkeypatch):
    import imalinkd.locate

    def boom(*_a, **_k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(imalinkd.locate, "scan_locations", boom)
    r = env.client.get("/storage/scan-locations")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error; see the daemon's log"}
    assert "Traceback" not in r.text and "secret" not in r.text
    assert env.client.get("/import-sessions").status_code == 200  # the server goes on


# --- listening -----------------------------------------------------------------------------------


def test_empty_listen_disables_the_api(tmp_path):
    config = make_config(tmp_path, tmp_path / "archive", listen="")
    catalog = Catalog.open(config)
    try:
        server = start_api_server(config, catalog, ProgressHub())
        assert not server.enabled and server.url is None
        server.stop()
    finally:
        catalog.close()


def test_busy_port_is_a_clear_error(env, tmp_path):
    from imalinkd.errors import ImalinkError

    config = make_config(tmp_path, tmp_path / "archive", listen=env.server.url.removeprefix("http://"))
    with pytest.raises(ImalinkError, match="cannot listen"):
        start_api_server(config, env.catalog, ProgressHub(), token=TOKEN)


def test_stop_returns_promptly_with_an_open_event_stream(tmp_path):
    e = Env(tmp_path, tmp_path / "archive").start()
    events: list = []
    ready, stop = threading.Event(), threading.Event()
    threading.Thread(target=read_events, args=(e.server.url, events, ready, stop), daemon=True).start()
    assert ready.wait(10)
    closer = threading.Thread(target=e.close, daemon=True)  # a stop that waited for the stream would never end
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "stopping the API waited for the open event stream"
    with pytest.raises(httpx.HTTPError):
        httpx.get(e.server.url + "/health", timeout=1)


def test_non_loopback_listen_warns_and_needs_the_token_for_reads(tmp_path):
    with structlog.testing.capture_logs() as logs:
        e = Env(tmp_path, tmp_path / "archive", listen="0.0.0.0:0").start()
    assert any(entry["event"] == "api_not_loopback" and entry["log_level"] == "warning" for entry in logs)
    try:
        port = e.server.port
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        assert c.get("/import-sessions").status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/import-sessions", headers=AUTH).status_code == 200
        assert c.get("/health").status_code == 200
        c.close()
    finally:
        e.close()


def test_unix_socket_is_private_and_its_peers_need_no_token(tmp_path):
    sock_path = tmp_path / "run" / "api.sock"
    e = Env(tmp_path, tmp_path / "archive", listen=f"unix:{sock_path}")
    e.server = start_api_server(e.config, e.catalog, e.hub, token=TOKEN)
    try:
        assert stat.S_ISSOCK(sock_path.stat().st_mode) and stat.S_IMODE(sock_path.stat().st_mode) == 0o600
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock_path)), base_url="http://imalinkd") as c:
            assert c.get("/import-sessions").json() == []
            assert c.post("/storage/reindex", json={}).status_code == 200
    finally:
        e.server.stop()
        e.catalog.close()
    assert not sock_path.exists()


def _ask_as(uid: int | None, sock_path: str) -> bytes:
    """The first bytes of the answer to a request on the unix socket, from a child process
    running as ``uid`` (None: this user); b"" when the connection is closed unanswered."""
    import socket

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        try:
            os.close(r)
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(sock_path)
            try:
                s.sendall(b"GET /import-sessions HTTP/1.1\r\nHost: x\r\n\r\n")
                got = s.recv(100)
            except (ConnectionResetError, BrokenPipeError):  # closed by the server
                got = b""
            os.write(w, b"+" + got)
        except BaseException as e:
            os.write(w, b"!" + repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    assert out.startswith(b"+"), out
    return out[1:]


def test_unix_socket_turns_away_another_users_process_even_if_its_mode_is_loosened(tmp_path):
    import shutil
    import tempfile

    from mounts import require_root

    require_root("switching to another user for the peer")
    run_dir = tempfile.mkdtemp(prefix="imalinkd-api-")  # reachable by any user, unlike tmp_path
    os.chmod(run_dir, 0o755)
    sock_path = os.path.join(run_dir, "api.sock")
    e = Env(tmp_path, tmp_path / "archive", listen=f"unix:{sock_path}")
    e.server = start_api_server(e.config, e.catalog, e.hub, token=TOKEN)
    try:
        os.chmod(sock_path, 0o666)  # loosened by hand: the file system lets anyone connect now
        assert _ask_as(65534, sock_path) == b""  # another user: connected, then closed unanswered
        assert _ask_as(None, sock_path).startswith(b"HTTP/1.1 200")
    finally:
        e.server.stop()
        e.catalog.close()
        shutil.rmtree(run_dir, ignore_errors=True)


# --- an unplugged archive -----------------------------------------------------------------------


def test_unmounted_archive_makes_files_404_and_storage_inaccessible(tmp_path):
    mnt = tmp_path / "mnt"
    with ext4_image(mnt, size_mb=64):
        e = Env(tmp_path, mnt / "photos").start()
        try:
            result, files = e.import_card()
            items = items_of(e, result.session_uuid)
            assert e.client.get(f"/images/{items[0]['id']}/file").status_code == 200
            umount(mnt, lazy_fallback=False)
            assert not (mnt / "photos").exists(), "the archive could not be unmounted: something holds it open"
            r = e.client.get(f"/images/{items[0]['id']}/file")
            assert r.status_code == 404 and r.json() == {"detail": NOT_ACCESSIBLE}
            r = e.client.get(f"/images/{items[0]['id']}/thumbnail")
            assert r.status_code == 404
            st = e.client.get(f"/import-sessions/{result.session_uuid}/storage-status").json()
            assert st["storage_accessible"] is False and st["files_accessible"] == 0 and st["total_files"] == len(files)
            assert e.client.get(f"/import-sessions/{result.session_uuid}").json()["storage_accessible"] is False
            m = metrics(e)
            assert value(m, "imalinkd_sessions", status="completed") == 1
            assert not any(s.labels.get("storage_id") for s in m.get("imalinkd_storage_free_bytes", []) if str(mnt) in str(s))
            assert all(loc["path"] != str(mnt / "photos") for loc in e.client.get("/storage/scan-locations").json())
        finally:
            e.close()
