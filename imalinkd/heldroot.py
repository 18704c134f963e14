"""The archive being written, held open: writes into a session go through a handle on its
directory, never through the mount path again.

A path is looked up afresh at every use. When an archive drive goes away during an import
(a desktop lazily unmounts a pulled drive, ``umount -l``), the same path leads to the
directory *below* the mount point, on the system disk: writes by path would land there,
hidden again once the drive is back, and the import would call itself done. So the storage
root is opened once, its marker read through that handle, and a session directory is made
(or opened) relative to it: everything written into the session goes through the session's
handle. ``via`` is a path through the handle (``/proc/self/fd/N``): the kernel resolves it
to the directory itself, not to whatever the mount path leads to now, and every path-based
call (a copy's temporary file, a thumbnail, the manifest) can use it. ``path`` is the
directory's real path, for messages and for the user.

Reaching the drive through the handle is not reason enough to go on: a detached drive is
about to vanish, and the path the user is told no longer leads to it. :meth:`HeldRoot.gone`
asks whether the root's path still leads to the held directory and still holds a marker with
its identity; the copy stage asks before each commit and stops the import (``failed``,
resumable) when not.

A handle stays valid until :meth:`close`; the caller closes it only after every thread that
writes through it has finished.
"""

from __future__ import annotations

import os

from imalinkd import storage
from imalinkd.errors import ArchiveGoneError, MarkerError, StorageError

FD_DIR = "/proc/self/fd"


def _via(fd: int) -> str:
    return f"{FD_DIR}/{fd}"


class HeldRoot:
    """A storage root opened once, its identity read through the handle."""

    def __init__(self, path: str, marker: storage.Marker) -> None:
        self.path = os.path.abspath(path)
        self.marker = marker
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise StorageError(path=self.path, message=f"cannot open the storage root: {e.strerror or e}") from None
        st = os.fstat(self.fd)
        self.dev, self.ino = st.st_dev, st.st_ino
        try:
            reachable = os.path.samestat(os.stat(self.via), st)
        except OSError:
            reachable = False
        if not reachable:
            self.close()
            raise StorageError(path=self.path, message=f"{FD_DIR} is not available (is /proc mounted?): the archive "
                                                       "cannot be written through a handle")
        problem = self._identity_problem(self.via)
        if problem is not None:
            self.close()
            raise ArchiveGoneError(path=self.path, why=problem)

    @property
    def via(self) -> str:
        """A path that reaches the held directory whatever is mounted at ``path`` now."""
        return _via(self.fd)

    def _identity_problem(self, where: str) -> str | None:
        try:
            found = storage.read_marker(where)
        except (MarkerError, OSError) as e:
            return f"its marker cannot be read: {e}"
        if found is None:
            return f"{storage.MARKER} is gone"
        if found.storage_id != self.marker.storage_id:
            return f"it now holds storage {found.storage_id}, not {self.marker.storage_id}"
        return None

    def gone(self) -> str | None:
        """Why the root's path no longer leads to this archive, or None while it does: the
        path must lead to the held directory (same device and inode) and hold the marker
        with this identity."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            return f"{self.path} cannot be reached: {e.strerror or e}"
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            return f"{self.path} no longer leads to the drive (unplugged or unmounted)"
        return self._identity_problem(self.path)

    def check(self) -> None:
        """Raise ArchiveGoneError unless the root's path still leads to this archive."""
        problem = self.gone()
        if problem is not None:
            raise ArchiveGoneError(path=self.path, why=problem)

    def make_session(self, name: str) -> "HeldSession":
        """Create the session directory ``name`` and its ``files/`` on this root, durably
        (each new directory's parent fsynced), and hold it."""
        self.check()
        os.mkdir(name, 0o755, dir_fd=self.fd)
        os.fsync(self.fd)
        held = self.open_session(name)
        try:
            os.mkdir("files", 0o755, dir_fd=held.fd)
            os.fsync(held.fd)
        except BaseException:
            held.close()
            raise
        return held

    def open_session(self, name: str) -> "HeldSession":
        """Hold the existing session directory ``name`` of this root (never a symlink)."""
        if not storage.is_session_dir_name(name):
            raise StorageError(path=os.path.join(self.path, name), message="not a session directory name")
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        if os.fstat(fd).st_dev != self.dev:  # a mount on top of the session directory
            os.close(fd)
            raise StorageError(path=os.path.join(self.path, name), message="is on another file system than its storage root")
        return HeldSession(self, name, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class HeldSession:
    """A session directory held open on its root. Write through ``via``; tell ``path``."""

    def __init__(self, root: HeldRoot, name: str, fd: int) -> None:
        self.root = root
        self.name = name
        self.path = os.path.join(root.path, name)
        self.fd = fd

    @property
    def via(self) -> str:
        return _via(self.fd)

    def gone(self) -> str | None:
        return self.root.gone()

    def gone_message(self) -> str | None:
        """Why the session's archive is no longer where the user was told, in words, or None."""
        why = self.gone()
        return None if why is None else str(ArchiveGoneError(path=self.root.path, why=why))

    def close(self) -> None:
        """Close the session's handle and its root's."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.root.close()


def hold_session(session_dir: str) -> HeldSession:
    """The existing session directory at ``session_dir`` (found by its root's identity just
    now), held open to be written through."""
    root, name = os.path.split(session_dir)
    marker = storage.read_marker(root)
    if marker is None:
        raise StorageError(path=root, message=f"holds no {storage.MARKER} marker any more")
    held_root = HeldRoot(root, marker)
    try:
        return held_root.open_session(name)
    except OSError as e:
        held_root.close()
        raise StorageError(path=session_dir, message=f"cannot open the session directory: {e.strerror or e}") from None
    except BaseException:
        held_root.close()
        raise
