"""Card recognition and policy matching, on plain values only."""

from datetime import datetime, timezone
from pathlib import Path

from imalinkd.config import CardPolicy, Config
from imalinkd.daemon.identify import CardIdentity
from imalinkd.daemon.policy import (
    BUSY,
    DEFAULT_CARD_POLICY,
    card_description,
    card_job_key,
    classify_mount,
    is_watched_mount,
    match_card_policy,
    plan_card_job,
    render_template,
)

EOS = CardIdentity(fs_uuid="EF8E-F480", label="EOS_DIGITAL")
MEDIA = Path("/media/pi/EOS_DIGITAL")


def test_dcim_card_without_rules_gets_default_policy_named_after_label():
    policy = match_card_policy((), EOS, MEDIA, has_dcim=True)
    assert policy == DEFAULT_CARD_POLICY
    assert card_description(policy, EOS, MEDIA) == "EOS_DIGITAL"


def test_mount_without_dcim_and_no_rule_is_not_a_card():
    assert match_card_policy((), EOS, MEDIA, has_dcim=False) is None


def test_first_matching_rule_wins():
    a = CardPolicy(label="EOS_*", description="canon")
    b = CardPolicy(label="*", description="any")
    assert match_card_policy((a, b), EOS, MEDIA, True) is a
    assert match_card_policy((b, a), EOS, MEDIA, True) is b


def test_label_glob_is_case_insensitive():
    rule = CardPolicy(label="eos_digital")
    assert match_card_policy((rule,), EOS, MEDIA, True) is rule


def test_uuid_matches_exactly_ignoring_hex_case():
    rule = CardPolicy(uuid="ef8e-f480", description="mine")
    other = CardIdentity(fs_uuid="EF8E-F481", label="EOS_DIGITAL")
    assert match_card_policy((rule,), EOS, MEDIA, True) is rule
    assert match_card_policy((rule,), other, MEDIA, True) is DEFAULT_CARD_POLICY


def test_path_glob_matches_mount_point():
    rule = CardPolicy(path="/media/*/EOS_*", description="p")
    assert match_card_policy((rule,), EOS, MEDIA, True) is rule
    assert match_card_policy((rule,), EOS, Path("/mnt/x"), True) is DEFAULT_CARD_POLICY


def test_all_set_fields_must_match():
    rule = CardPolicy(label="EOS_DIGITAL", uuid="0000-0000")
    assert match_card_policy((rule,), EOS, MEDIA, True) is DEFAULT_CARD_POLICY


def test_named_rule_makes_a_card_of_a_mount_without_dcim():
    rule = CardPolicy(label="AUDIO_REC", description="recorder")
    rec = CardIdentity(fs_uuid="1234-5678", label="AUDIO_REC")
    assert match_card_policy((rule,), rec, Path("/media/rec"), has_dcim=False) is rule


def test_catch_all_rule_applies_only_to_dcim_cards():
    rule = CardPolicy(description="{label} {date}")
    assert match_card_policy((rule,), EOS, MEDIA, True) is rule
    assert match_card_policy((rule,), EOS, MEDIA, False) is None


def test_disabled_rule_means_ignore_the_card():
    rule = CardPolicy(label="EOS_*", enabled=False)
    assert match_card_policy((rule,), EOS, MEDIA, True) is None


def test_archive_marker_wins_over_dcim():
    assert classify_mount(card_policy=DEFAULT_CARD_POLICY, storage_roots=(MEDIA,)) == "archive"
    assert classify_mount(card_policy=DEFAULT_CARD_POLICY, storage_roots=()) == "card"
    assert classify_mount(card_policy=None, storage_roots=()) == "ignore"


def test_description_template_values_and_missing_keys():
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    rule = CardPolicy(description="{date}_{label}_{folder}_{camera_model}{nonsense}")
    assert card_description(rule, EOS, MEDIA, now) == "2026-11-24_EOS_DIGITAL_EOS_DIGITAL_"


def test_broken_template_is_used_literally():
    assert render_template("{label", {"label": "x"}) == "{label"


def test_same_card_at_two_mount_points_has_one_job_key():
    assert card_job_key(EOS, "7:0") == card_job_key(EOS, "7:3")
    assert card_job_key(CardIdentity(None, None), "7:0") == "dev:7:0"


def test_plan_card_job_for_a_new_card():
    kind, job, _ = plan_card_job(
        config=Config(), mount_point=MEDIA, mount_source="/dev/loop3", device_number="7:3",
        identity=EOS, has_dcim=True, storage_roots=(),
    )
    assert kind == "card"
    assert job is not None and job.description == "EOS_DIGITAL" and job.device == "/dev/loop3"


def test_plan_card_job_defers_a_second_job_for_a_busy_card():
    key = card_job_key(EOS, "7:3")
    kind, job, reason = plan_card_job(
        config=Config(), mount_point=Path("/mnt/other"), mount_source="/dev/loop3",
        device_number="7:3", identity=EOS, has_dcim=True, storage_roots=(), busy_keys={key},
    )
    assert kind == "card" and job is not None and reason == BUSY


def test_plan_for_archive_has_no_card_job():
    kind, job, _ = plan_card_job(
        config=Config(), mount_point=MEDIA, mount_source="/dev/sdb1", device_number="8:17",
        identity=EOS, has_dcim=False, storage_roots=(MEDIA / "archive",),
    )
    assert kind == "archive" and job is None


def test_mount_paths_limit_the_mounts_examined():
    assert is_watched_mount(MEDIA, ())
    assert is_watched_mount(MEDIA, ("/media",))
    assert is_watched_mount(MEDIA, ("/media/*",))
    assert is_watched_mount(Path("/run/media/pi/X"), ("/media/*", "/run/media/*/*"))
    assert not is_watched_mount(Path("/mediax/card"), ("/media",))
    assert not is_watched_mount(Path("/"), ("/media/*",))
