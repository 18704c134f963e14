"""Pure decisions: which card rule applies, what a mount is, what a card job is called.

Nothing here touches the OS. The service gathers facts (blkid identity, whether it has a
camera layout, which storage roots a mount holds) and these functions turn them into decisions,
so every rule is tested with plain values.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from imalinkd.config import CardPolicy, Config, DropFolderPolicy
from imalinkd.daemon.identify import CardIdentity
from imalinkd.naming import render_description

MountKind = Literal["card", "archive", "ignore"]

DEFAULT_CARD_POLICY = CardPolicy()


def _glob(pattern: str, value: str, *, casefold: bool) -> bool:
    if casefold:
        return fnmatch.fnmatchcase(value.casefold(), pattern.casefold())
    return fnmatch.fnmatchcase(value, pattern)


def has_matcher(rule: CardPolicy) -> bool:
    """Whether a rule names the cards it is for (label, uuid or path); a rule without
    any is a catch-all for camera cards.

    ``has_dcim`` here and below: the mount has a camera layout (``DCIM/`` or another one of
    :mod:`imalinkd.cardlayout`), as ``identify.is_camera_card`` says."""
    return bool(rule.label or rule.uuid or rule.path)


def rule_matches(rule: CardPolicy, identity: CardIdentity, mount_point: Path, has_dcim: bool) -> bool:
    """One rule against one mount. Every field the rule sets must match: ``label`` is a
    case-insensitive glob, ``uuid`` exact (case-insensitive hex), ``path`` a glob on the
    mount point. A rule that sets none of them matches any camera card."""
    if not has_matcher(rule):
        return has_dcim
    if rule.label and not _glob(rule.label, identity.label or "", casefold=True):
        return False
    if rule.uuid and (identity.fs_uuid or "").casefold() != rule.uuid.casefold():
        return False
    if rule.path and not _glob(rule.path, str(mount_point), casefold=False):
        return False
    return True


def match_card_policy(
    cards: tuple[CardPolicy, ...], identity: CardIdentity, mount_point: Path, has_dcim: bool
) -> CardPolicy | None:
    """The policy for a mount, or None when it is not a card to import.

    First matching rule wins. A matching rule with ``enabled = false`` means "ignore this
    card" (None). A camera card (any camera layout) that no rule matches gets the default policy, whose
    description is ``"{label}"``; a mount without one is a card only if a rule names it.
    """
    for rule in cards:
        if rule_matches(rule, identity, mount_point, has_dcim):
            return rule if rule.enabled else None
    return DEFAULT_CARD_POLICY if has_dcim else None


def is_watched_mount(mount_point: Path, patterns: tuple[str, ...]) -> bool:
    """Whether ``[daemon] mount_paths`` lets the daemon look at this mount at all. No
    patterns: every mount. A pattern is a glob on the mount point (``*`` spans ``/``) or a
    directory whose mounts below it count."""
    if not patterns:
        return True
    mp = str(mount_point)
    for pattern in patterns:
        base = pattern.rstrip("/") or "/"
        if fnmatch.fnmatchcase(mp, pattern) or mp == base or mp.startswith(base.rstrip("/") + "/"):
            return True
    return False


def classify_mount(*, card_policy: CardPolicy | None, storage_roots: tuple[Path, ...]) -> MountKind:
    """What a new mount is. A mount holding a storage marker is an archive drive, even if
    it also has a DCIM/ directory: an archive is never imported into itself. Otherwise it
    is a card when a card policy applies, and ignored when none does."""
    if storage_roots:
        return "archive"
    if card_policy is not None:
        return "card"
    return "ignore"


def card_job_key(identity: CardIdentity, device: str) -> str:
    """The key that serialises jobs: one import at a time per card. The filesystem
    identity when known (the same card at two mount points is one card), else the
    kernel device number."""
    if identity.fs_uuid or identity.label:
        return f"card:{identity.fs_uuid or ''}:{identity.label or ''}"
    return f"dev:{device}"


def drop_job_key(folder: Path) -> str:
    return f"drop:{folder}"


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill a description template: unknown keys become empty, and a broken template
    (stray brace, attribute access) is used as literal text rather than failing the import."""
    return render_description(template, **values)


def description_values(
    *, label: str | None, folder: Path | str | None, now: datetime | None = None, camera_model: str = ""
) -> dict[str, str]:
    """The values a description template may use: ``label``, ``folder`` (the mount point's
    or drop folder's name), ``date`` (YYYY-MM-DD, UTC), ``camera_model``."""
    now = now or datetime.now(timezone.utc)
    return {
        "label": label or "",
        "folder": Path(folder).name if folder else "",
        "date": now.strftime("%Y-%m-%d"),
        "camera_model": camera_model,
    }


def card_description(policy: CardPolicy, identity: CardIdentity, mount_point: Path, now: datetime | None = None) -> str:
    return render_template(policy.description, description_values(label=identity.label, folder=mount_point, now=now))


def drop_description(policy: DropFolderPolicy, now: datetime | None = None) -> str:
    return render_template(policy.description, description_values(label=None, folder=policy.path, now=now))


def drop_policy_for(config: Config, folder: Path) -> DropFolderPolicy | None:
    for policy in config.drop_folders:
        if Path(policy.path) == Path(folder):
            return policy
    return None


def settle_seconds(config: Config, policy: DropFolderPolicy) -> float:
    return policy.settle_seconds if policy.settle_seconds is not None else config.daemon.settle_seconds


@dataclass(frozen=True)
class CardJob:
    """Everything a card import needs, decided before any thread starts."""

    key: str
    mount_point: Path
    device: str  # block device path for SourceInfo (mount source), e.g. /dev/loop3
    identity: CardIdentity
    policy: CardPolicy
    description: str


BUSY = "busy"


def plan_card_job(
    *,
    config: Config,
    mount_point: Path,
    mount_source: str,
    device_number: str,
    identity: CardIdentity,
    has_dcim: bool,
    storage_roots: tuple[Path, ...],
    busy_keys: frozenset[str] | set[str] = frozenset(),
    now: datetime | None = None,
) -> tuple[MountKind, CardJob | None, str]:
    """Decide what a new mount means: ``(kind, job, reason)``.

    ``job`` is None unless the mount is a card to import. ``reason`` is ``"start"`` when the
    job can start now, ``BUSY`` when an import of the same card is running (the job is to
    start after it: the card may have been pulled and put back, at another mount point,
    before its job noticed), else a short phrase for the log.
    """
    policy = match_card_policy(config.cards, identity, mount_point, has_dcim)
    kind = classify_mount(card_policy=policy, storage_roots=storage_roots)
    if kind != "card":
        if kind == "ignore" and has_dcim:
            return kind, None, "a card rule with enabled = false matches"
        return kind, None, "not a card" if kind == "ignore" else "archive"
    assert policy is not None
    key = card_job_key(identity, device_number)
    job = CardJob(
        key=key,
        mount_point=mount_point,
        device=mount_source,
        identity=identity,
        policy=policy,
        description=card_description(policy, identity, mount_point, now),
    )
    return kind, job, BUSY if key in busy_keys else "start"


def drop_files_to_delete(
    batch: tuple[Path, ...],
    folder: Path,
    archived: dict[str, int],
    duplicates: set[str],
    current_size: dict[str, int | None],
) -> list[Path]:
    """Which files of a drop batch ``after_import = "delete"`` may remove: those the
    session archived (verified; ``archived`` maps their relative path to the size that was
    copied) or that were already archived (``duplicates``), and only while the file still
    has the size that was archived. Anything else (skipped, unreadable, changed since) stays."""
    out = []
    for path in batch:
        try:
            rel = path.relative_to(folder).as_posix()
        except ValueError:
            continue
        size = current_size.get(rel)
        if size is None:
            continue
        if rel in duplicates or archived.get(rel) == size:
            out.append(path)
    return out
