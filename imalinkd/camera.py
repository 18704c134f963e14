"""Cameras and phones on a USB cable (PTP/MTP), through libgphoto2's ``gphoto2`` command.

A camera is a source like a card: its files are listed, each read from the camera once
(``gphoto2 --get-file N --stdout``) and hashed while it is written to a staging directory,
then imported from there by the ordinary engine, which copies, verifies on the archive side
and records them; last, every archived file's sha256 is compared with the one taken while
reading the camera, and only then is the staging directory removed. Nothing here claims a
camera's files are safe before that comparison.

Resumable: a staged file is committed under its name (temporary name, fsync, rename) and
written to a journal with its size and sha256 only then, so after a kill only the file in
flight is read again; a session left failed is resumed from the staging directory.

Identity: the camera's model and serial number (``gphoto2 --summary``), not its USB port,
which changes at every plug. Files already archived from the same camera (same path, size
and time) are not read again. ``gphoto2`` runs as a separate process for each request, so a
hung camera never hangs the daemon: it is killed on a stop or a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog

from imalinkd import durable
from imalinkd.errors import SourceError

log = structlog.get_logger()

CHUNK = 1 << 20
_SERIAL = re.compile(r"^\s*Serial\s*Number\s*:\s*(\S.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_FOLDER = re.compile(r"^There (?:is|are) (?:no|\d+) files? in folder '(.*)'\.?\s*$")
_FILE = re.compile(r"^#(\d+)\s+(.+?)\s+[rwd-]+\s+\d+ KB\s+\S+(?:\s+(\d+))?\s*$")
_INFO = re.compile(r"^Information on file '(.*)' \(folder '(.*)'\):\s*$")
_SIZE = re.compile(r"^\s*Size:\s*(\d+) byte")


class CameraError(SourceError):
    """Camera {camera}: {message}"""


@dataclass(frozen=True)
class Camera:
    """A camera as libgphoto2 names it: ``model`` and ``port`` (``usb:001,014``), and its
    serial number once asked (None when the camera does not say)."""

    model: str
    port: str
    serial: str | None = None

    @property
    def key(self) -> str:
        """Who the camera is, across plugs and ports."""
        return f"camera:{self.model}:{self.serial or ''}"

    @property
    def name(self) -> str:
        return f"{self.model} ({self.serial})" if self.serial else self.model


@dataclass(frozen=True)
class CameraFile:
    folder: str  # the camera's folder, "/DCIM/100CANON" ("/store_00010001/DCIM/…" on PTP)
    name: str
    index: int  # its number within the folder, for --get-file
    size: int
    mtime: int | None  # seconds since the epoch, when the camera says

    @property
    def rel(self) -> str:
        """The path below the source: the camera's folder and name, ``/``-separated."""
        return f"{self.folder.strip('/')}/{self.name}" if self.folder.strip("/") else self.name


def parse_auto_detect(text: str) -> list[Camera]:
    """The cameras ``gphoto2 --auto-detect`` lists (model, then the port, which has no
    spaces). Cards that libgphoto2 sees as mass storage (``disk:`` ports) are left to the
    mount table."""
    cams = []
    lines = text.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("----")), len(lines))
    for line in lines[start:]:
        model, _, port = line.strip().rpartition(" ")
        model = model.strip()
        if model and port and not port.startswith("disk:"):
            cams.append(Camera(model, port))
    return cams


def parse_serial(summary: str) -> str | None:
    m = _SERIAL.search(summary)
    serial = m.group(1).strip() if m else ""
    return serial if serial and serial.strip("0") else None  # some cameras report zeros


def parse_listing(list_files: str, show_info: str) -> list[CameraFile]:
    """Files from ``--list-files`` (folder, name, number in the folder, time) with their
    exact sizes from ``--show-info`` (``--list-files`` rounds to KB). Both number the files
    in the same order."""
    listed: list[tuple[str, str, int, int | None]] = []
    folder, in_folder = "/", 0
    for line in list_files.splitlines():
        m = _FOLDER.match(line)
        if m:
            folder, in_folder = m.group(1), 0
            continue
        m = _FILE.match(line)
        if m:
            in_folder += 1
            listed.append((folder, m.group(2), in_folder, int(m.group(3)) if m.group(3) else None))
    sizes: list[tuple[str, str, int]] = []
    current: tuple[str, str] | None = None
    for line in show_info.splitlines():
        m = _INFO.match(line)
        if m:
            current = (m.group(2), m.group(1))
            continue
        m = _SIZE.match(line)
        if m and current is not None:
            sizes.append((*current, int(m.group(1))))
            current = None
    if [(f, n) for f, n, _ in sizes] != [(f, n) for f, n, _, _ in listed]:
        raise CameraError(camera="?", message="the camera's file list and file details disagree; plug it in again")
    return [CameraFile(f, n, i, size, t) for (f, n, i, t), (_, _, size) in zip(listed, sizes)]


class Gphoto2:
    """The ``gphoto2`` command: the process boundary to libgphoto2."""

    def __init__(self, command: str = "gphoto2", timeout: float = 120.0) -> None:
        self.command = command
        self.timeout = timeout

    def _args(self, camera: Camera | None) -> list[str]:
        return [self.command] + (["--camera", camera.model, "--port", camera.port] if camera else [])

    def run(self, camera: Camera | None, *args: str) -> str:
        name = camera.name if camera else "auto-detect"
        try:
            proc = subprocess.run([*self._args(camera), *args], capture_output=True, text=True, errors="surrogateescape",
                                  timeout=self.timeout, check=False, start_new_session=True)
        except FileNotFoundError:
            raise CameraError(camera=name, message=f"the '{self.command}' command is not installed (Debian: apt install gphoto2)") from None
        except subprocess.TimeoutExpired:
            raise CameraError(camera=name, message=f"gphoto2 {' '.join(args)} did not answer within {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            raise CameraError(camera=name, message=_last_error(proc.stderr) or f"gphoto2 {' '.join(args)} failed")
        return proc.stdout

    def detect(self) -> list[Camera]:
        return parse_auto_detect(self.run(None, "--auto-detect"))

    def identify(self, camera: Camera) -> Camera:
        """The camera with its serial number, when it tells one."""
        try:
            serial = parse_serial(self.run(camera, "--summary"))
        except CameraError as e:  # some drivers have no summary; the model alone names it then
            log.info("camera_no_summary", camera=camera.model, port=camera.port, reason=str(e))
            serial = None
        return Camera(camera.model, camera.port, serial)

    def list_files(self, camera: Camera) -> list[CameraFile]:
        listing = self.run(camera, "--list-files")
        count = sum(1 for line in listing.splitlines() if _FILE.match(line))
        if count == 0:
            return []
        return parse_listing(listing, self.run(camera, "--show-info", f"1-{count}"))

    def open_file(self, camera: Camera, f: CameraFile) -> subprocess.Popen:
        """A process writing the file's bytes to its stdout."""
        args = [*self._args(camera), "--folder", f.folder, "--no-recurse", "--get-file", str(f.index), "--stdout"]
        try:
            return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise CameraError(camera=camera.name, message=f"the '{self.command}' command is not installed") from None


def _last_error(stderr: str) -> str:
    lines = [line.strip().strip("*").strip() for line in stderr.splitlines() if line.strip().strip("*").strip()]
    useful = [line for line in lines if not line.lower().startswith(("for debugging", "debugging messages", "if you intend",
                                                                       "developer mailing", "gphoto2 as follows", "env lang",
                                                                       "please make sure"))]
    return useful[-1] if useful else ""


# --- staging ------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^\w\-.]", "_", text)[:80] or "camera"


class Staging:
    """Where a camera's files are put while it is read: ``<dir>/<camera>/`` holds them
    under their camera paths, ``<dir>/<camera>.jsonl`` the journal of those complete (path,
    size, sha256 taken while reading the camera)."""

    def __init__(self, base: Path, camera: Camera) -> None:
        ident = _safe(f"{camera.model}_{camera.serial}" if camera.serial else camera.model)
        self.dir = Path(base) / ident
        self.journal = Path(base) / f"{ident}.jsonl"

    def load(self) -> dict[str, tuple[int, str]]:
        """The journal's files that are still staged whole."""
        done: dict[str, tuple[int, str]] = {}
        try:
            lines = self.journal.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except FileNotFoundError:
            return done
        for line in lines:
            try:
                e = json.loads(line)
                rel, size, sha = str(e["path"]), int(e["size"]), str(e["sha256"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
            try:
                if os.lstat(self.dir / rel).st_size == size:
                    done[rel] = (size, sha)
            except OSError:
                pass
        return done

    def fetch(self, gp: Gphoto2, camera: Camera, f: CameraFile, cancel: threading.Event, on_bytes: Callable[[int], None]) -> str:
        """Read ``f`` from the camera once, hashing it, into its staged place; returns its
        sha256. Committed (``durable.Sink``: fsync, rename, fsync of the directory) and then
        journalled only when whole and of the listed size."""
        target = self.dir / f.rel
        if not target.resolve().is_relative_to(self.dir.resolve()):
            raise CameraError(camera=camera.name, message=f"refusing a file name that leads out of its folder: {f.rel!r}")
        target.unlink(missing_ok=True)  # staged whole by a run killed before its journal line
        sink = durable.Sink(str(target))
        proc = gp.open_file(camera, f)
        h, size = hashlib.sha256(), 0
        try:
            sink.open()
            while True:
                if cancel.is_set():
                    raise InterruptedError("stop requested")
                block = proc.stdout.read1(CHUNK)
                if not block:
                    break
                h.update(block)
                sink.write(memoryview(block))
                size += len(block)
                on_bytes(len(block))
            err = proc.stderr.read().decode("utf-8", "replace")
            if proc.wait() != 0 or size != f.size:
                reason = _last_error(err) or f"{size} bytes read, the camera lists {f.size}"
                raise CameraError(camera=camera.name, message=f"reading {f.rel} failed: {reason}; connect the camera again to resume")
            sink.finish((f.mtime * 10**9, f.mtime * 10**9) if f.mtime else None)
            sink.commit()
        except BaseException:
            _kill(proc)
            sink.discard()
            raise
        finally:
            proc.stdout.close()
            proc.stderr.close()
        digest = h.hexdigest()
        with open(self.journal, "a", encoding="utf-8", errors="surrogateescape") as j:
            j.write(json.dumps({"path": f.rel, "size": size, "sha256": digest}, ensure_ascii=False) + "\n")
            j.flush()
            os.fsync(j.fileno())
        return digest

    def remove_partials(self) -> int:
        return durable.remove_partials(self.dir) if self.dir.is_dir() else 0

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
        self.journal.unlink(missing_ok=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
