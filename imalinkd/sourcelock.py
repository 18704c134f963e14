"""One import per source at a time, across processes (the daemon, the command line, two
commands at once).

Every import and resume holds a *claim* while it runs: a small JSON file in the locks
directory (:func:`locks_dir`: beside a SQLite catalog, so every process sharing a catalog
shares its locks; else in the state directory) saying what it reads (the source's real path, the path inside its
file system, the file system's UUID where known) and who it is (pid, command, since when),
kept under an exclusive ``flock`` for as long as the process runs. The kernel drops the
lock when the process ends, however it ends, so a claim left by a killed process is stale
and is removed by the next one.

Two claims conflict when they name the same file system UUID (one card, however and
wherever mounted), or when one source lies inside the other on the same file system (a
card's mount point and its DCIM folder; the same directory through a bind mount). A new
import waits for every conflicting claim to end, saying once what it waits for; when it
then runs, what the other one archived is found as duplicates, so a card is never
archived twice. Deciding and writing a claim happen under one lock of the whole
directory, so two processes never both see the way free.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import psutil
import structlog

from imalinkd import fsinfo, storage
from imalinkd.errors import ImalinkError

log = structlog.get_logger()

LOCKS_DIR = "locks"
REGISTRY = "imports.lock"
POLL_SECONDS = 0.25  # how often a waiting import looks again (it also wakes on cancel)


class SourceLockError(ImalinkError):
    """Cannot take the import lock in {path}: {message}. Run imalinkd as the user that
    owns its catalog (the daemon's user, for the command line beside it)."""


class SourceWaitCancelled(ImalinkError):
    """Stopped while waiting for another import of {source} to finish."""


@dataclass(frozen=True)
class Claim:
    source: str  # real path
    fs_path: str  # the path inside its file system
    dev: int
    fs_uuid: str | None
    pid: int
    host: str
    command: str
    since: str

    def conflicts_with(self, other: "Claim") -> bool:
        if self.fs_uuid and other.fs_uuid and self.fs_uuid.lower() == other.fs_uuid.lower():
            return True
        return self.dev == other.dev and (_within(self.fs_path, other.fs_path) or _within(other.fs_path, self.fs_path))

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}) since {self.since}, reading {self.source}"


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def claim_for(source: str, fs_uuid: str | None = None) -> Claim:
    """What an import of ``source`` claims. ``fs_uuid`` is the card's when the caller knows
    it; otherwise it is looked up for a source on a removable-looking mount (a block device
    mounted anywhere but at ``/``), so that the command line and the daemon name a card alike."""
    real = os.path.realpath(source)
    entry = fsinfo.mount_of(real)
    if fs_uuid is None and entry is not None and entry.mount_point != "/" and fsinfo.backing_block_device(entry):
        from imalinkd.daemon.identify import probe_filesystem

        fs_uuid = probe_filesystem(entry.source)[0]
    try:
        command = " ".join(psutil.Process().cmdline()) or "imalinkd"
    except psutil.Error:
        command = "imalinkd"
    return Claim(
        source=real, fs_path=fsinfo.path_in_filesystem(real, entry), dev=os.stat(real).st_dev, fs_uuid=fs_uuid,
        pid=os.getpid(), host=socket.gethostname(), command=command[:200], since=storage.iso(storage.utcnow()) or "",
    )


def _open_locked(path: Path, flags: int, how: int) -> int | None:
    """``path`` opened and flock-ed with ``how``; None when the lock is not free (LOCK_NB)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, how)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise


def locks_dir(config) -> Path:
    """``locks/`` beside the catalog when it is a SQLite file (the processes that share a
    catalog share this directory), else in the state directory."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(config.catalog_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(url.database).resolve().parent / LOCKS_DIR
    except Exception:  # a bad URL is reported by the catalog itself
        pass
    return Path(config.daemon.state_dir) / LOCKS_DIR


class SourceLock:
    """Held while an import reads its source (see the module's overview)."""

    def __init__(self, directory: str | os.PathLike[str], claim: Claim) -> None:
        self.dir = Path(directory)
        self.claim = claim
        self.path = self.dir / f"import-{claim.pid}-{uuid.uuid4().hex[:12]}.json"
        self.fd = -1

    def acquire(self, cancel: threading.Event | None = None, on_wait: Callable[[Claim], None] | None = None) -> None:
        """Take the claim, waiting while a conflicting one is held. ``on_wait`` is called once
        with the claim waited for; ``cancel`` ends the wait (SourceWaitCancelled)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SourceLockError(path=str(self.dir), message=e.strerror or str(e)) from None
        told = False
        while True:
            holder = self._try_claim()
            if holder is None:
                return
            if not told:
                told = True
                log.info("import_waiting_for_source", source=self.claim.source, held_by=holder.describe())
                if on_wait is not None:
                    on_wait(holder)
            if cancel is not None:
                if cancel.wait(POLL_SECONDS):
                    raise SourceWaitCancelled(source=self.claim.source)
            else:
                threading.Event().wait(POLL_SECONDS)

    def _try_claim(self) -> Claim | None:
        """Under the directory's lock: the first live conflicting claim, or None after
        writing and locking ours. Stale claims (their process gone) are removed."""
        try:
            registry = _open_locked(self.dir / REGISTRY, os.O_RDWR | os.O_CREAT, fcntl.LOCK_EX)
        except OSError as e:
            raise SourceLockError(path=str(self.dir / REGISTRY), message=e.strerror or str(e)) from None
        try:
            for other_path in sorted(self.dir.glob("import-*.json")):
                other = self._live_claim(other_path)
                if other is not None and other.conflicts_with(self.claim):
                    return other
            self._write_claim()
            return None
        finally:
            os.close(registry)

    @staticmethod
    def _live_claim(path: Path) -> Claim | None:
        try:
            probe = _open_locked(path, os.O_RDONLY, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except FileNotFoundError:
            return None
        if probe is not None:  # nobody holds it: its process is gone
            os.close(probe)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        try:
            data = json.loads(path.read_bytes())
            return Claim(**data)
        except (OSError, ValueError, TypeError):
            return None  # being written (under the registry lock, so not now) or damaged: no claim

    def _write_claim(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps(asdict(self.claim)).encode())
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        self.fd = fd

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("import_lock_not_removed", path=str(self.path), error=e.strerror)
        os.close(self.fd)
        self.fd = -1


def first_use_lock_path(config) -> Path:
    """The lock first-use decisions are made under: the catalog's own ``<catalog>.lock``
    (the one its migrations take) for a SQLite catalog, else ``locks/first-use.lock``."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(config.catalog_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(f"{url.database}.lock")
    except Exception:
        pass
    return Path(config.daemon.state_dir) / LOCKS_DIR / "first-use.lock"


@contextmanager
def exclusive(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block: one process at a time across the
    station (first-use initialisation, say)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path, os.O_RDWR | os.O_CREAT, fcntl.LOCK_EX)
    except OSError as e:
        raise SourceLockError(path=str(path), message=e.strerror or str(e)) from None
    try:
        yield
    finally:
        os.close(fd)


@contextmanager
def holding_source(directory: str | os.PathLike[str], source: str, fs_uuid: str | None = None,
                   cancel: threading.Event | None = None, on_wait: Callable[[Claim], None] | None = None) -> Iterator[SourceLock]:
    """Hold the claim on ``source`` for the block (waiting for a conflicting import first)."""
    lock = SourceLock(directory, claim_for(source, fs_uuid))
    lock.acquire(cancel, on_wait)
    try:
        yield lock
    finally:
        lock.release()
