"""A real local HTTP receiver for notifications: apprise's JSON webhook (``json://``) posts
``{"title", "message", "type", …}`` here; the test reads what arrived. ``hang()`` makes it
hold every new request unanswered until ``release()`` (a notification service that is
down but still accepts connections)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.held = 0  # requests currently held unanswered
        self._release = threading.Event()
        self._release.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not receiver._release.is_set():
                    with receiver._lock:
                        receiver.held += 1
                    receiver._release.wait(120)
                    with receiver._lock:
                        receiver.held -= 1
                with receiver._lock:
                    receiver.posts.append({"path": self.path, **json.loads(body or b"{}")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def hang(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def wait_for(self, predicate, timeout: float = 60, what: str = "a notification") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [p for p in self.posts if predicate(p)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; received: {self.posts}")

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
