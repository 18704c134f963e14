"""The API token: made once, kept in a file only the service user can read.

Mutating endpoints need ``Authorization: Bearer <token>``. The token is generated on the
first start into ``config.api_token_file`` (directory created with mode 0700, the file
written with mode 0600 and never rewritten), so a client running as the same user (or
root) reads it from there. Tokens are compared in constant time. The token is never
logged.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat

import structlog

from imalinkd import durable

log = structlog.get_logger(__name__)


def ensure_token(path: str | os.PathLike[str]) -> str:
    """The token stored at ``path``, generating it there first if there is none.

    Raises OSError when the file can neither be read nor created. A token file that others
    can read is tightened to 0600 (and that is logged)."""
    path = os.fspath(path)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # made by another process just now
        return _read(path)
    try:
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    durable.fsync_dir(os.path.dirname(path) or ".")
    log.info("api_token_created", path=path)
    return token


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("api_token_permissions_tightened", path=path, mode=oct(st.st_mode & 0o777))
        token = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if len(token) < 16:
        raise OSError(f"{path} holds no usable token (delete it to have a new one made)")
    return token


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))
