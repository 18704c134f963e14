"""The settings in effect, as ``imalinkd check-config`` shows them: what the daemon will do
with this config, its defaults spelled out (the default camera-card rule, every mount
examined when ``mount_paths`` is empty, the state directory chosen for this user)."""

from __future__ import annotations

from imalinkd.config import CardPolicy, Config
from imalinkd.daemon.policy import DEFAULT_CARD_POLICY, has_matcher


def _matcher(rule: CardPolicy) -> str:
    if not has_matcher(rule):
        return "any camera card (DCIM/ or another camera layout)"
    parts = [f"{k} {v!r}" for k, v in (("label", rule.label), ("uuid", rule.uuid), ("path", rule.path)) if v]
    return " and ".join(parts)


def _rule(config: Config, rule: CardPolicy, name: str) -> dict:
    return {
        "rule": name,
        "matches": _matcher(rule),
        "enabled": rule.enabled,
        "description": rule.description,
        "include": list(rule.include if rule.include is not None else config.import_.include),
        "verify": rule.verify or config.import_.verify,
        "thumbnails": config.import_.thumbnails if rule.thumbnails is None else rule.thumbnails,
        "after_import": rule.after_import,
    }


def card_rules(config: Config) -> list[dict]:
    """The ``[[card]]`` rules in the order they are tried (first match wins), then the
    built-in rule for camera cards no rule matched."""
    rules = [_rule(config, r, str(i)) for i, r in enumerate(config.cards, 1)]
    default = _rule(config, DEFAULT_CARD_POLICY, "default")
    default["matches"] = "any other camera card (DCIM/ or another camera layout)"
    return rules + [default]


def summary(config: Config) -> dict:
    return {
        "card_rules_in_effect": card_rules(config),
        "mount_paths_in_effect": list(config.daemon.mount_paths) or ["(every mounted file system)"],
        "state_dir_in_effect": str(config.daemon.state_dir),
        "cameras_in_effect": _cameras(config),
    }


def _cameras(config: Config) -> dict:
    from imalinkd.camera_import import staging_dir

    c = config.cameras
    return {"enabled": c.enabled, "gphoto2": c.gphoto2, "poll_seconds": c.poll_seconds,
            "staging_dir": str(staging_dir(config)), "ports": list(c.ports)}


def describe(config: Config) -> list[str]:
    """The same as text lines for the terminal."""
    lines = [f"  state directory: {config.daemon.state_dir}",
             "  mount paths examined: " + (", ".join(config.daemon.mount_paths) or "every mounted file system"),
             "  card rules (first match wins):"]
    for r in card_rules(config):
        what = ("ignored" if not r["enabled"] else
                f"description {r['description']!r}, verify {r['verify']}, thumbnails {'on' if r['thumbnails'] else 'off'}, "
                f"after import {r['after_import']}" + (f", only {', '.join(r['include'])}" if r["include"] else ""))
        lines.append(f"    {r['rule']}: {r['matches']}: {what}")
    c = _cameras(config)
    lines.append("  cameras on USB: " + (f"watched with {c['gphoto2']}, staging in {c['staging_dir']}"
                                         + (f", also {', '.join(c['ports'])}" if c["ports"] else "") if c["enabled"] else "not watched"))
    return lines
