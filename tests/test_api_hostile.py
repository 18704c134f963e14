"""The API against hostile clients, on the real server (``start_api_server``) over a real
archive: DNS rebinding (foreign Host headers), cross-origin reads, half-sent requests
(slowloris) and more connections than it should hold."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import structlog.testing

from test_api import AUTH, Env

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def imported(tmp_path):
    e = Env(tmp_path, tmp_path / "archive").start()
    e.import_card()
    yield e
    e.close()


def _image_id(env) -> int:
    sid = env.client.get("/import-sessions").json()[0]["import_session_id"]
    items = env.client.get(f"/import-sessions/{sid}/images").json()["items"]
    return next(i["id"] for i in items if i["content_type"] == "image/jpeg" and "/IMG_" in i["storage_relative_path"])


def _connect(env) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", env.server.port), timeout=30)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout of 30 s
    fails the test: the server kept a connection it should have closed)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def _read_one_answer(s: socket.socket) -> bytes:
    """One whole answer (headers and its Content-Length of body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


# --- DNS rebinding -------------------------------------------------------------------------------


def test_a_rebound_host_name_cannot_read_the_archive(imported):
    env = imported
    image = _image_id(env)
    with structlog.testing.capture_logs() as logs:
        for path in (f"/images/{image}/file", f"/images/{image}/thumbnail", "/import-sessions", "/metrics",
                     "/storage/scan-locations", "/openapi.json", "/health"):
            r = env.client.get(path, headers={"Host": f"attacker.example:{env.server.port}"})
            assert r.status_code == 421, (path, r.status_code)
            assert "attacker.example" in r.json()["detail"] and "allowed_hosts" in r.json()["detail"]
            assert b"\xff\xd8" not in r.content  # no JPEG bytes
        # the token does not make a foreign name acceptable either
        r = env.client.post("/storage/reindex", json={}, headers={**AUTH, "Host": "attacker.example"})
        assert r.status_code == 421
    assert [e for e in logs if e["event"] == "api_host_refused"][0]["host"] == f"attacker.example:{env.server.port}"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "127.0.0.1"])
def test_the_names_the_server_is_reachable_as_are_answered(imported, host):
    env = imported
    r = env.client.get(f"/images/{_image_id(env)}/file", headers={"Host": host.format(port=env.server.port)})
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"


def test_allowed_hosts_adds_names_and_subdomains(tmp_path):
    e = Env(tmp_path, tmp_path / "archive", allowed_hosts=["photos.lan", "*.home.arpa"]).start()
    try:
        assert e.client.get("/import-sessions", headers={"Host": "photos.lan:8765"}).status_code == 200
        assert e.client.get("/import-sessions", headers={"Host": "nas.home.arpa"}).status_code == 200
        assert e.client.get("/import-sessions", headers={"Host": "home.arpa.evil.example"}).status_code == 421
        assert e.client.get("/import-sessions", headers={"Host": "evilhome.arpa"}).status_code == 421
    finally:
        e.close()


def test_a_request_without_a_host_header_is_refused(imported):
    with _connect(imported) as s:
        s.sendall(b"GET /import-sessions HTTP/1.0\r\n\r\n")
        answer = _read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 400") and b"Host header" in answer


def test_beyond_loopback_reads_need_the_token_and_a_foreign_name_is_refused_even_with_it(tmp_path):
    e = Env(tmp_path, tmp_path / "archive", listen="0.0.0.0:0").start()
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{e.server.port}", timeout=10)
        assert c.get("/import-sessions", headers={"Host": "192.0.2.7"}).status_code == 401  # an address: checked further
        assert c.get("/import-sessions", headers={**AUTH, "Host": "[2001:db8::7]:8765"}).status_code == 200
        assert c.get("/import-sessions", headers={**AUTH, "Host": socket.gethostname()}).status_code == 200
        assert c.get("/import-sessions", headers={**AUTH, "Host": "attacker.example"}).status_code == 421
        c.close()
    finally:
        e.close()


def test_no_cross_origin_reads_are_granted(imported):
    env = imported
    origin = {"Origin": "http://attacker.example"}
    r = env.client.get("/import-sessions", headers=origin)
    assert r.status_code == 200
    assert not [k for k in r.headers if k.lower().startswith("access-control-")]
    pre = env.client.options("/import-sessions", headers={**origin, "Access-Control-Request-Method": "GET"})
    assert pre.status_code >= 400
    assert not [k for k in pre.headers if k.lower().startswith("access-control-")]


def test_bad_allowed_hosts_entries_are_refused_by_name(tmp_path):
    from imalinkd.config import parse_config
    from imalinkd.errors import ConfigError

    for bad in ("http://photos.lan", "photos.lan:8765", "pho*tos.lan", ""):
        with pytest.raises(ConfigError, match="api.allowed_hosts"):
            parse_config({"api": {"allowed_hosts": [bad]}, "daemon": {"state_dir": str(tmp_path)}})


# --- bounded connections -------------------------------------------------------------------------


def test_a_half_sent_request_is_answered_408_and_closed(imported):
    with _connect(imported) as s:  # the default timeout (10 s)
        s.sendall(b"GET /import-sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
        assert _read_until_closed(s).startswith(b"HTTP/1.1 408")
    assert imported.client.get("/health").status_code == 200  # the server itself is fine


def test_a_slow_body_or_a_silent_client_is_closed_too(tmp_path):
    e = Env(tmp_path, tmp_path / "archive", request_timeout_seconds=1).start()
    try:
        with _connect(e) as s:  # headers done, body never complete
            s.sendall(b"POST /storage/reindex HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"verify\"")
            assert _read_until_closed(s) == b""  # a request was read: no 408 mid-request, just closed
        with _connect(e) as s:  # says nothing at all
            assert _read_until_closed(s).startswith(b"HTTP/1.1 408")
        assert e.client.get("/health").status_code == 200  # the server itself is fine
    finally:
        e.close()


def test_a_kept_alive_connection_gets_the_timeout_again_for_its_next_request(tmp_path):
    e = Env(tmp_path, tmp_path / "archive", request_timeout_seconds=1, idle_timeout_seconds=30).start()
    try:
        with _connect(e) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _read_one_answer(s).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the second one never ends
            assert _read_until_closed(s).startswith(b"HTTP/1.1 408")
    finally:
        e.close()


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(tmp_path):
    e = Env(tmp_path, tmp_path / "archive", idle_timeout_seconds=1).start()
    try:
        with _connect(e) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = _read_until_closed(s)  # answered, then closed once idle
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"}")
    finally:
        e.close()


def test_connections_beyond_the_limit_are_answered_503_and_closed(tmp_path):
    e = Env(tmp_path, tmp_path / "archive", max_connections=5, request_timeout_seconds=60).start()
    held = []
    try:
        for _ in range(5):
            s = _connect(e)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half-sent: held open
            held.append(s)
        # the five are held; a sixth client is turned away at once, whatever it asks
        with _connect(e) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = _read_until_closed(s)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"].startswith("too many open connections")
        # once the held ones go, clients are served again
        for s in held:
            s.close()
        held.clear()
        for _ in range(300):
            with _connect(e) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if _read_until_closed(s).startswith(b"HTTP/1.1 200"):
                    break
        else:
            pytest.fail("the server never served again after the held connections were closed")
    finally:
        for s in held:
            s.close()
        e.close()


def test_the_connection_limit_stays_below_a_quarter_of_the_open_file_limit():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]));"
            "from imalinkd.api.server import connection_limit; print(connection_limit(64), connection_limit(1000))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.splitlines()[-1].split() == ["64", "64"]


def test_api_limits_are_checked_when_the_config_is_loaded(tmp_path):
    from imalinkd.config import parse_config
    from imalinkd.errors import ConfigError

    for key, bad in (("max_connections", 0), ("request_timeout_seconds", 0), ("idle_timeout_seconds", -1)):
        with pytest.raises(ConfigError, match=f"api.{key}"):
            parse_config({"api": {key: bad}, "daemon": {"state_dir": str(tmp_path)}})
