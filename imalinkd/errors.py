"""One exception hierarchy for everything a user can be told about.

Each class's docstring is its message template; ``str(error)`` fills it in from the keyword
arguments given. ``exit_code`` is what the CLI exits with (DESIGN §6): 1 when an operation
failed or found a problem, 2 for usage and configuration errors. Anything that is not an
``ImalinkError`` is a bug and is allowed to print a traceback.
"""

from __future__ import annotations


class ImalinkError(Exception):
    """{message}"""

    exit_code = 1

    def __init__(self, message: str | None = None, **fields: object) -> None:
        self.fields = fields
        if message is not None:
            fields.setdefault("message", message)
        try:  # the template's line breaks are the docstring's, not the message's
            text = " ".join((self.__doc__ or "{message}").split()).format(**fields)
        except (KeyError, IndexError):
            text = message or self.__class__.__name__
        from imalinkd import redact

        super().__init__(redact.text(text))  # messages end up in logs and on terminals


class ConfigError(ImalinkError):
    """Configuration error in {source}: {message}"""

    exit_code = 2


class UsageError(ImalinkError):
    """{message}"""

    exit_code = 2


class StorageError(ImalinkError):
    """Storage problem at {path}: {message}"""


class ArchiveAbsentError(StorageError):
    """The archive is not there: {message}"""


class StorageNotInitialisedError(ArchiveAbsentError):
    """{path} is not a storage root: it holds no config.json marker. Nothing was written.
    If the archive drive is not plugged in, plug it in; to start a new archive in this
    directory, run 'imalinkd init-storage {path}'."""


class ArchiveGoneError(StorageError):
    """The archive drive at {path} went away during the import ({why}). Nothing was written
    below its mount point; what was copied is on the drive. Plug the drive back in and
    resume the session."""


class StorageNotMountedError(ArchiveAbsentError):
    """Storage root {path} was initialised before (storage_id {storage_id}) but its marker
    config.json is gone: the archive drive is probably not mounted. Nothing was written.
    Mount the drive, or point [storage] root at where it is now; to start a new, empty
    archive there instead, run 'imalinkd init-storage {path}'."""


class StorageNotFoundError(ArchiveAbsentError):
    """No storage root with storage_id {storage_id} is reachable{where}. Plug in the archive
    drive (it is found at any mount path), or set [storage] root."""


class StorageFullError(StorageError):
    """Storage {path} has too little room: {free} free, {needed} needed (including a safety
    margin). Free some space and run the import again{resume_hint}."""


class StorageNotWritableError(StorageError):
    """Storage {path} is not writable: {message}"""


class MarkerError(StorageError):
    """Storage marker {path} is invalid: {message}"""


class ManifestError(ImalinkError):
    """Manifest {path} rejected: {message}"""


class SourceError(ImalinkError):
    """Source {path} cannot be imported: {message}"""


class SessionNotFoundError(ImalinkError):
    """No import session matches {ref!r}. 'imalinkd sessions' lists them."""


class AmbiguousSessionError(ImalinkError):
    """{ref!r} matches more than one session ({matches}); give more of the UUID."""

    exit_code = 2


class SessionStateError(ImalinkError):
    """Session {session} is {status}: {message}"""


class SessionBusyError(ImalinkError):
    """Session {session} is being imported by another process right now."""


class CopyError(ImalinkError):
    """Copying {path} failed: {message}"""


class VerificationError(CopyError):
    """Verification of {path} failed: {message}"""


class CatalogError(ImalinkError):
    """Catalog {url}: {message}"""


def human_bytes(n: float) -> str:
    """Format a byte count for messages: '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
