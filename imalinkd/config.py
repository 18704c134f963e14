"""Configuration: one TOML file loaded once into frozen dataclasses.

Where the file comes from: ``--config FILE``, else ``$IMALINKD_CONFIG``, else
``/etc/imalinkd/imalinkd.toml`` if it exists, else the embedded defaults (no file at all).
Unknown keys are rejected by name, so a typo never silently falls back to a default.
Every key is documented in ``config/imalinkd.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from imalinkd import redact
from imalinkd.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/imalinkd/imalinkd.toml")
VERIFY_LEVELS = ("size", "sha256", "paranoid")
CARD_AFTER_IMPORT = ("none", "unmount", "power-off")
DROP_AFTER_IMPORT = ("keep", "delete")
UNPLUGGED_DUPLICATES = ("copy", "skip")
AUTOMOUNT = ("auto", "on", "off")
ALERT_KINDS = ("import_completed", "import_failed", "waiting_for_archive", "damage_found", "backup_caught_up")


def default_state_dir() -> Path:
    """Where the catalog and daemon state live without a config: /var/lib/imalinkd for
    root (as the systemd unit runs it), the XDG state directory for everyone else."""
    if os.geteuid() == 0:
        return Path("/var/lib/imalinkd")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "imalinkd"


def default_storage_root() -> Path:
    """The archive without a config: /var/lib/imalinkd/archive for root, else
    ``$XDG_DATA_HOME/imalinkd/archive``."""
    if os.geteuid() == 0:
        return Path("/var/lib/imalinkd/archive")
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "imalinkd" / "archive"


@dataclass(frozen=True)
class CatalogConfig:
    url: str = ""  # empty: sqlite file in the state directory


@dataclass(frozen=True)
class StorageConfig:
    root: Path | None = None
    storage_id: str | None = None
    search_depth: int = 2  # how far below a mount point a storage marker is looked for
    allow_fuse: bool = False  # believe markers found on FUSE mounts (ntfs-3g, exfat-fuse) made by root
    free_space_warning_percent: float = 5.0
    safety_margin_mb: int = 16  # preflight: room needed beyond the planned bytes
    backups: tuple[str, ...] = ()  # backup archives: paths, or "id:<storage_id>" (DESIGN §8)
    copies: int | None = None  # verified copies on distinct drives before a source is safe

    @property
    def copies_wanted(self) -> int:
        """``copies``, or its default: 2 with backups configured, 1 without."""
        if self.copies is not None:
            return self.copies
        return 2 if self.backups else 1


@dataclass(frozen=True)
class ImportConfig:
    verify: str = "sha256"
    workers: int = 2  # files being fsynced and verified at once
    readers: int = 2  # files read from the source at once
    thumbnails: bool = True
    thumbnail_size: int = 512
    copy_files: bool = True  # false: a legacy/reference import that catalogues in place
    include: tuple[str, ...] = ()  # file extensions to take (empty: all regular files)
    exclude: tuple[str, ...] = ()  # glob patterns of paths to leave alone
    checkpoint_seconds: float = 2.0  # how often metadata.json is rewritten during a copy
    # a file whose only archived copies are on drives not plugged in: "copy" it again, or
    # "skip" it as a duplicate unchecked (the source is then never called unneeded)
    unplugged_duplicates: str = "copy"


@dataclass(frozen=True)
class ApiConfig:
    listen: str = "127.0.0.1:8765"
    token_file: Path | None = None  # default: <state_dir>/api-token
    allowed_hosts: tuple[str, ...] = ()  # Host names answered beyond the listen address and localhost
    max_connections: int = 64  # open HTTP connections at once; more are answered 503 and closed
    request_timeout_seconds: float = 10.0  # to send a whole request (headers and body)
    idle_timeout_seconds: float = 5.0  # a kept-alive connection with no request is closed
    optional: bool = False  # true: a daemon whose API cannot listen goes on without it (else it stops)


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    automount: str = "auto"  # mount removable cards read-only ourselves: "auto", "on" (true) or "off" (false)
    settle_seconds: float = 2.0  # drop folders: how long a file must be unchanged
    drop_rescan_seconds: float = 300.0  # drop folders: list them again this often for what events missed; 0: never
    watchdog: bool = True  # send WATCHDOG=1 when systemd asks for it
    mount_paths: tuple[str, ...] = ()  # globs of mount points examined for cards/archives; empty: all
    drive_job_seconds: float = 1800.0  # the longest a reindex of one drive may take in the daemon
    log_level: str = "info"


@dataclass(frozen=True)
class NotifyConfig:
    """Notifications to the user (imalinkd.daemon.alerts), through apprise URLs."""

    urls: tuple[str, ...] = ()  # apprise URLs: "ntfy://…", "mailtos://…", "json://host/path", …; empty: none
    events: tuple[str, ...] = ALERT_KINDS  # which kinds are sent
    timeout_seconds: float = 10.0  # connect and read timeout of one delivery


@dataclass(frozen=True)
class ScrubConfig:
    """Scrubs (imalinkd.scrub): archive drives re-verified a slice at a time."""

    on_plug: bool = True  # scrub a drive each time it is plugged in (after its reindex)
    budget: str = "10%"  # per scrub: "10%" of the drive's bytes, "20GB", "30m", or "pass"
    interval_hours: float = 168.0  # a drive that stays plugged in: scrubbed when its last scrub is older; 0: never


@dataclass(frozen=True)
class CamerasConfig:
    """``[cameras]``: cameras and phones on a USB cable (PTP/MTP) through libgphoto2."""

    enabled: bool = True  # the daemon watches for cameras (needs the gphoto2 command)
    poll_seconds: float = 5.0  # how often ``gphoto2 --auto-detect`` is asked (udev events ask at once)
    gphoto2: str = "gphoto2"  # the command
    staging_dir: Path | None = None  # where a camera's files wait for the import; default <state_dir>/cameras
    ports: tuple[str, ...] = ()  # MODEL@PORT tried besides auto-detect, e.g. "Directory Browse@disk:/srv/phone"
    description: str = "{label}"  # session description template; {label} is the camera's model


@dataclass(frozen=True)
class CardPolicy:
    """A ``[[card]]`` rule. Match fields left empty match anything."""

    label: str | None = None  # volume label, exact or glob
    uuid: str | None = None  # filesystem UUID
    path: str | None = None  # mount point glob
    description: str = "{label}"
    include: tuple[str, ...] | None = None
    verify: str | None = None
    thumbnails: bool | None = None
    after_import: str = "none"
    # when after_import happens: "safe" (every file has [storage] copies verified copies on
    # distinct drives) or "copied" (imported and verified once, on the primary)
    after_import_when: str = "safe"
    enabled: bool = True  # false: matching cards are ignored


@dataclass(frozen=True)
class DropFolderPolicy:
    path: Path
    description: str = "{folder}"
    settle_seconds: float | None = None
    after_import: str = "keep"
    include: tuple[str, ...] | None = None
    verify: str | None = None


@dataclass(frozen=True)
class Config:
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    import_: ImportConfig = field(default_factory=ImportConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    cameras: CamerasConfig = field(default_factory=CamerasConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    cards: tuple[CardPolicy, ...] = ()
    drop_folders: tuple[DropFolderPolicy, ...] = ()
    source: str = "embedded defaults"  # where this config came from, for messages

    @property
    def catalog_url(self) -> str:
        return self.catalog.url or f"sqlite:///{self.daemon.state_dir / 'catalog.db'}"

    @property
    def storage_root(self) -> Path | None:
        """The configured archive path; None when the archive is named by storage_id only."""
        if self.storage.root is not None:
            return self.storage.root
        if self.storage.storage_id is None:
            return default_storage_root()
        return None

    @property
    def api_token_file(self) -> Path:
        return self.api.token_file or self.daemon.state_dir / "api-token"


def _scrub_section(reader: "_Reader", data: Mapping[str, Any]) -> ScrubConfig:
    from imalinkd.scrub.budget import BudgetError, parse_budget

    scrub = reader.section(data, "scrub", ScrubConfig)
    try:
        parse_budget(scrub.budget)
    except BudgetError as e:
        reader.fail("scrub.budget", str(e))
    if scrub.interval_hours < 0:
        reader.fail("scrub.interval_hours", "must be 0 (never) or more")
    return scrub


def _daemon_section(reader: "_Reader", data: Mapping[str, Any]) -> DaemonConfig:
    raw = data.get("daemon", {})
    if isinstance(raw, dict) and isinstance(raw.get("automount"), bool):  # true/false: "on"/"off"
        data = {**data, "daemon": {**raw, "automount": "on" if raw["automount"] else "off"}}
    daemon = reader.section(data, "daemon", DaemonConfig)
    reader.check_choice("daemon.automount", daemon.automount, AUTOMOUNT)
    return daemon


def _notify_section(reader: "_Reader", data: Mapping[str, Any]) -> NotifyConfig:
    notify = reader.section(data, "notify", NotifyConfig)
    for i, url in enumerate(notify.urls):
        if "://" not in url:  # the URL itself is not repeated: it may hold a token
            reader.fail(f"notify.urls[{i}]", "is not a URL (scheme://…); see https://github.com/caronc/apprise/wiki")
        redact.remember(url)
    for kind in notify.events:
        reader.check_choice("notify.events", kind, ALERT_KINDS)
    if not 0.5 <= notify.timeout_seconds <= 300:
        reader.fail("notify.timeout_seconds", "must be between 0.5 and 300")
    return notify


# --- loading -------------------------------------------------------------------------------


def config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The file to read, or None for the embedded defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("IMALINKD_CONFIG")
    if env:
        return Path(env)
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config. Raises ConfigError naming the file and the key."""
    path = config_path(explicit)
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(source=str(path), message="file not found") from None
    except OSError as e:
        raise ConfigError(source=str(path), message=e.strerror or str(e)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source=str(path), message=f"not valid TOML: {e}") from None
    return parse_config(data, source=str(path), base=path.parent)


def parse_config(data: Mapping[str, Any], source: str = "<config>", base: Path | None = None) -> Config:
    """Turn parsed TOML into a Config. Relative paths are taken relative to ``base``."""
    reader = _Reader(source, base or Path.cwd())
    known = {"catalog", "storage", "import", "api", "daemon", "scrub", "cameras", "notify", "card", "drop_folder"}
    reader.reject_unknown(data, known, "")
    daemon = _daemon_section(reader, data)
    if daemon.drop_rescan_seconds != 0 and daemon.drop_rescan_seconds < 1:
        reader.fail("daemon.drop_rescan_seconds", "must be 0 (never) or at least 1 second")
    if daemon.log_level.lower() not in ("debug", "info", "warning", "error"):
        reader.fail("daemon.log_level", "must be one of debug, info, warning, error")
    if not daemon.drive_job_seconds > 0:
        reader.fail("daemon.drive_job_seconds", "must be more than 0")
    catalog = reader.section(data, "catalog", CatalogConfig)
    redact.remember_url(catalog.url)
    storage = reader.section(data, "storage", StorageConfig)
    if storage.storage_id is not None:
        import uuid

        try:
            uuid.UUID(storage.storage_id)
        except ValueError:
            reader.fail("storage.storage_id", f"{storage.storage_id!r} is not a UUID")
    if storage.search_depth < 0:
        reader.fail("storage.search_depth", "must be 0 or more")
    _check_backups(reader, storage)
    imp = reader.section(data, "import", ImportConfig)
    reader.check_choice("import.verify", imp.verify, VERIFY_LEVELS)
    reader.check_choice("import.unplugged_duplicates", imp.unplugged_duplicates, UNPLUGGED_DUPLICATES)
    if not 1 <= imp.workers <= 64:
        reader.fail("import.workers", "must be between 1 and 64")
    if not 1 <= imp.readers <= 16:
        reader.fail("import.readers", "must be between 1 and 16")
    if not 16 <= imp.thumbnail_size <= 4096:
        reader.fail("import.thumbnail_size", "must be between 16 and 4096 pixels")
    api = reader.section(data, "api", ApiConfig)
    if api.listen:
        from imalinkd.netaddr import parse_listen

        try:
            parse_listen(api.listen)
        except ValueError as e:
            reader.fail("api.listen", str(e))
    _check_api_limits(reader, api)
    cameras = reader.section(data, "cameras", CamerasConfig)
    if cameras.poll_seconds <= 0:
        reader.fail("cameras.poll_seconds", "must be more than 0")
    for i, spec in enumerate(cameras.ports):
        model, sep, port = spec.rpartition("@")
        if not (sep and model and port):
            reader.fail(f"cameras.ports[{i}]", f"{spec!r} is not MODEL@PORT (e.g. \"Directory Browse@disk:/srv/phone\")")
    cards = []
    for i, raw in enumerate(reader.array(data, "card")):
        card = reader.build(raw, CardPolicy, f"card[{i}]")
        reader.check_choice(f"card[{i}].after_import", card.after_import, CARD_AFTER_IMPORT)
        reader.check_choice(f"card[{i}].after_import_when", card.after_import_when, ("safe", "copied"))
        if card.verify is not None:
            reader.check_choice(f"card[{i}].verify", card.verify, VERIFY_LEVELS)
        cards.append(card)
    drops = []
    for i, raw in enumerate(reader.array(data, "drop_folder")):
        if "path" not in raw:
            reader.fail(f"drop_folder[{i}].path", "is required")
        drop = reader.build(raw, DropFolderPolicy, f"drop_folder[{i}]")
        reader.check_choice(f"drop_folder[{i}].after_import", drop.after_import, DROP_AFTER_IMPORT)
        if drop.verify is not None:
            reader.check_choice(f"drop_folder[{i}].verify", drop.verify, VERIFY_LEVELS)
        drops.append(drop)
    config = Config(
        catalog=catalog,
        storage=storage,
        import_=imp,
        api=api,
        daemon=daemon,
        scrub=_scrub_section(reader, data),
        cameras=cameras,
        notify=_notify_section(reader, data),
        cards=tuple(cards),
        drop_folders=tuple(drops),
        source=source,
    )
    from imalinkd import layout

    wrong = layout.problems(config)
    if wrong:
        reader.fail(wrong[0][0], "\n  ".join([wrong[0][1], *(f"{key}: {why}" for key, why in wrong[1:])]))
    return config


def _check_backups(reader: "_Reader", storage: StorageConfig) -> None:
    import uuid

    for i, spec in enumerate(storage.backups):
        if spec.startswith("id:"):
            try:
                uuid.UUID(spec[3:])
            except ValueError:
                reader.fail(f"storage.backups[{i}]", f"{spec!r}: after 'id:' comes a storage_id (a UUID)")
        elif not os.path.isabs(spec):
            reader.fail(f"storage.backups[{i}]", f"{spec!r} is not an absolute path (or 'id:<storage_id>')")
    if storage.copies is not None and not 1 <= storage.copies <= 1 + len(storage.backups):
        reader.fail("storage.copies", f"must be between 1 and {1 + len(storage.backups)} (the archive and its "
                                      f"{len(storage.backups)} backup(s)): more copies than drives is never safe")


def _check_api_limits(reader: "_Reader", api: ApiConfig) -> None:
    from imalinkd.netaddr import check_pattern

    for pattern in api.allowed_hosts:
        why = check_pattern(pattern)
        if why:
            reader.fail("api.allowed_hosts", why)
    if not 1 <= api.max_connections <= 10000:
        reader.fail("api.max_connections", "must be between 1 and 10000")
    if not 0.5 <= api.request_timeout_seconds <= 3600:
        reader.fail("api.request_timeout_seconds", "must be between 0.5 and 3600")
    if not 0.5 <= api.idle_timeout_seconds <= 3600:
        reader.fail("api.idle_timeout_seconds", "must be between 0.5 and 3600")


class _Reader:
    """Builds dataclasses from TOML tables, checking names and types against the fields."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(source=self.source, message=f"{key}: {message}")

    def reject_unknown(self, table: Mapping[str, Any], known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                name = f"{prefix}{key}"
                hint = f" (known: {', '.join(sorted(known))})" if known else ""
                self.fail(name, f"unknown key{hint}")

    def check_choice(self, key: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")

    def section(self, data: Mapping[str, Any], name: str, cls: type) -> Any:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            self.fail(name, "must be a table ([" + name + "])")
        return self.build(raw, cls, name)

    def array(self, data: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
        raw = data.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            self.fail(name, f"must be an array of tables ([[{name}]])")
        return raw

    def build(self, raw: Mapping[str, Any], cls: type, prefix: str) -> Any:
        fields = {f.name.rstrip("_"): f for f in dataclasses.fields(cls)}
        self.reject_unknown(raw, set(fields), prefix + ".")
        kwargs = {}
        for key, value in raw.items():
            f = fields[key]
            kwargs[f.name] = self.convert(f"{prefix}.{key}", value, str(f.type))
        return cls(**kwargs)

    def convert(self, key: str, value: Any, type_: str) -> Any:
        optional = "None" in type_
        if "Path" in type_:
            if not isinstance(value, str) or not value:
                self.fail(key, "must be a non-empty path string")
            p = Path(os.path.expanduser(value))
            return p if p.is_absolute() else (self.base / p)
        if "tuple" in type_:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                self.fail(key, "must be a list of strings")
            return tuple(value)
        if type_.startswith("bool"):
            if not isinstance(value, bool):
                self.fail(key, f"must be true or false, not {value!r}")
            return value
        if type_.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"must be a whole number, not {value!r}")
            return value
        if type_.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, f"must be a number, not {value!r}")
            return float(value)
        if type_.startswith("str") or (optional and "str" in type_):
            if not isinstance(value, str):
                self.fail(key, f"must be a string, not {value!r}")
            return value
        if optional and "bool" in type_:
            if not isinstance(value, bool):
                self.fail(key, f"must be true or false, not {value!r}")
            return value
        return value
