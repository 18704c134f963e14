"""A private mount namespace for tests whose drives are hostile to whoever reads them.

A FIFO where a marker should be blocks every process that scans the mounted file systems
for archives, and on a shared machine that is every other test run too. What a test mounts
in a :class:`MountNamespace` is seen only by the processes it runs there (the daemon or
command under test), never by the rest of the machine. The mounts the namespace inherits
below the temporary directory (other tests' cards and drives) are lazily unmounted in it at
once, so that it keeps none of them busy."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from mounts import require_root, require_tools

from imalinkd.daemon.mountinfo import parse_mountinfo


def _mount_points(pid: int) -> list[str]:
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return [e.mount_point for e in parse_mountinfo(f.read()).values()]


class MountNamespace:
    def __init__(self) -> None:
        require_root("a private mount namespace")
        require_tools("unshare", "nsenter", "losetup")
        self._loops: list[str] = []
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"])
        mine = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 30
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == mine:
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise RuntimeError("unshare did not make a mount namespace")
            time.sleep(0.01)
        self._release_below(tempfile.gettempdir())

    def command(self, *args: str | os.PathLike[str]) -> list[str]:
        """``args`` as a command run in the namespace (``nsenter`` execs it: same pid)."""
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", *map(os.fspath, args)]

    def run(self, *args: str | os.PathLike[str]) -> str:
        return subprocess.run(self.command(*args), check=True, capture_output=True, text=True).stdout.strip()

    def mount_loop(self, image: Path, mount_point: Path, *options: str) -> None:
        mount_point.mkdir(parents=True, exist_ok=True)
        self.run("mount", "-o", ",".join(("loop", *options)), image, mount_point)

    def mount_exfat(self, image: Path, mount_point: Path, readonly: bool = True) -> str:
        """An exFAT image through FUSE (read-only: like a card); returns its loop device."""
        mount_point.mkdir(parents=True, exist_ok=True)
        dev = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True).stdout.strip()
        self._loops.append(dev)
        self.run("mount.exfat-fuse", *(["-o", "ro"] if readonly else []), dev, mount_point)
        return dev

    def _release_below(self, top: str) -> None:
        top = top.rstrip("/") + "/"
        inherited = [mp for mp in _mount_points(self.holder.pid) if mp.startswith(top)]
        if inherited:
            inherited.sort(key=lambda p: -p.count("/"))
            subprocess.run(self.command("umount", "-l", *inherited), capture_output=True)

    def close(self) -> None:
        """Unmount what was mounted here (FUSE drivers exit then), end the namespace and
        detach the loop devices."""
        if self.holder.poll() is None:
            self._release_below(tempfile.gettempdir())
            self.holder.kill()
            self.holder.wait()
        for dev in self._loops:
            for _ in range(100):  # a FUSE driver lets go of its device once it has exited
                if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
        self._loops = []
