"""Config loading: defaults, every section, and refusal of bad values by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from imalinkd.config import Config, load_config, parse_config
from imalinkd.errors import ConfigError
from imalinkd.naming import render_description
from imalinkd.plan import group_photos, photo_key

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "imalinkd.toml"


def test_the_documented_example_config_is_valid_and_equals_the_defaults():
    cfg = load_config(EXAMPLE)
    assert cfg.import_ == Config().import_ and cfg.storage == Config().storage and cfg.api == Config().api


def test_embedded_defaults_use_the_user_dirs_when_not_root(monkeypatch, isolated_env):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    cfg = Config()
    assert str(cfg.daemon.state_dir).startswith(str(isolated_env))
    assert str(cfg.storage_root).startswith(str(isolated_env)) and cfg.catalog_url.endswith("/imalinkd/catalog.db")


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[storage]\nroot = "archive"\n[[drop_folder]]\npath = "drop"\n')
    cfg = load_config(p)
    assert cfg.storage.root == tmp_path / "archive" and cfg.drop_folders[0].path == tmp_path / "drop"


def test_card_rules_keep_their_order():
    cfg = parse_config({"card": [{"label": "EOS*", "verify": "size"}, {"uuid": "1A2B-3C4D", "include": "CR3"}]})
    assert [c.label for c in cfg.cards] == ["EOS*", None]
    assert cfg.cards[1].include == ("CR3",)


@pytest.mark.parametrize("data, key", [
    ({"nonsense": {}}, "nonsense"),
    ({"catalog": "x"}, "catalog"),
    ({"import": {"workers": 0}}, "import.workers"),
    ({"import": {"thumbnails": "yes"}}, "import.thumbnails"),
    ({"import": {"thumbnail_size": 5}}, "import.thumbnail_size"),
    ({"drop_folder": [{}]}, "drop_folder[0].path"),
    ({"drop_folder": [{"path": "/x", "after_import": "shred"}]}, "drop_folder[0].after_import"),
    ({"card": [{"labell": "x"}]}, "card[0].labell"),
    ({"daemon": {"log_level": "loud"}}, "daemon.log_level"),
    ({"storage": {"search_depth": -1}}, "storage.search_depth"),
])
def test_bad_values_are_refused_by_name(data, key):
    with pytest.raises(ConfigError) as e:
        parse_config(data, source="test.toml")
    assert key in str(e.value) and "test.toml" in str(e.value)
    assert e.value.exit_code == 2


def test_description_templates():
    assert render_description("{label}", label="EOS_DIGITAL") == "EOS_DIGITAL"
    assert render_description("{camera_model} {date}", camera_model="Canon EOS R5", date="2026-11-24") == "Canon EOS R5 2026-11-24"
    assert render_description("{unknown}x") == "x"
    assert render_description("{broken") == "{broken"


def test_photo_grouping_by_directory_and_stem():
    rels = ["DCIM/100/IMG_1.CR3", "DCIM/100/img_1.jpg", "DCIM/100/IMG_1.XMP", "DCIM/100/IMG_1.CR3.xmp",
            "DCIM/101/IMG_1.JPG", "DCIM/100/IMG_2.JPG"]
    groups = group_photos(rels)
    assert len(groups) == 3
    assert sorted(groups[photo_key("DCIM/100/IMG_1.CR3")]) == sorted(rels[:4])


@given(st.lists(st.sampled_from(["DCIM", "100", ".", "..", "", "IMG_1", ".hidden", "a.b", "x.", "IMG_1.CR3", "IMG_1.xmp",
                                 "img.JPG.XMP", "...", ".xmp", "a..xmp", "É.jpg"]), min_size=1, max_size=4))
def test_photo_key_splits_names_as_os_path_does(parts):
    from imalinkd.plan import SIDECAR_EXTENSIONS

    rel = "/".join(parts)
    directory, name = os.path.split(rel)
    stem, ext = os.path.splitext(name)
    if ext.lower() in SIDECAR_EXTENSIONS and os.path.splitext(stem)[1]:
        stem = os.path.splitext(stem)[0]
    assert photo_key(rel) == (f"{directory}/{stem.lower()}" if directory else stem.lower())
