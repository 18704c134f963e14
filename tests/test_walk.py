"""Listing a session's files, in this process and in the helper process that a reindex of
a large known drive runs beside it."""

from __future__ import annotations

import os
import sys

from imalinkd import durable
from imalinkd.walk import DigestHelper, files_digest, read_files_dir, walk_files


def test_walk_gives_sizes_of_regular_files_only(tmp_path):
    files = tmp_path / "files"
    (files / "a" / "b").mkdir(parents=True)
    (files / "a" / "b" / "x.JPG").write_bytes(b"12345")
    (files / "top.CR3").write_bytes(b"1")
    (files / "link.JPG").symlink_to(files / "top.CR3")
    (files / "dirlink").symlink_to(tmp_path)
    # a card file named like a temporary copy is a file like any other (temporary copies
    # are kept outside files/)
    (files / "a" / (durable.TEMP_PREFIX + "x.JPG")).write_bytes(b"a photo with an odd name")
    sizes, links = walk_files(str(files))
    assert sizes == {"a/b/x.JPG": 5, "top.CR3": 1, "a/" + durable.TEMP_PREFIX + "x.JPG": 24}
    assert sorted(links) == ["dirlink", "link.JPG"]


def test_a_files_dir_that_is_missing_lists_nothing_and_a_symlink_is_refused(tmp_path):
    assert read_files_dir(str(tmp_path / "none")) == ({}, None)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_bytes(b"x")
    (tmp_path / "files").symlink_to(tmp_path / "elsewhere")
    assert read_files_dir(str(tmp_path / "files")) == (None, "files/ is a symbolic link; not followed")


def test_the_digest_changes_with_any_size_or_name():
    base = {"DCIM/IMG_1.JPG": 5, "DCIM/IMG_1.CR3": 10}
    assert files_digest(dict(base)) == files_digest(base)
    assert len({files_digest(base), files_digest({**base, "DCIM/IMG_1.JPG": 6}), files_digest({"DCIM/IMG_1.JPG": 5}),
                files_digest({**base, "DCIM/IMG_2.JPG": 0}), files_digest({})}) == 5
    assert files_digest({os.fsdecode(b"\xff.JPG"): 1}) != files_digest({os.fsdecode(b"\xfe.JPG"): 1})


def test_the_helper_process_gives_the_digests_this_process_would(tmp_path):
    dirs = []
    for i, names in enumerate(([b"a.JPG", b"b.CR3"], [b"\xff-not-utf8.JPG"], [])):
        files = tmp_path / f"s{i}" / "files"
        (files / "DCIM").mkdir(parents=True)
        for n, name in enumerate(names):
            with open(os.path.join(os.fsencode(files / "DCIM"), name), "wb") as f:
                f.write(b"x" * (n + i))
        dirs.append(str(files))
    dirs.append(str(tmp_path / "no-such-session" / "files"))
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "files").symlink_to(tmp_path / "s0" / "files")
    dirs.append(str(tmp_path / "linked" / "files"))
    here = [files_digest(sizes) if sizes is not None else None for sizes, _ in map(read_files_dir, dirs)]
    assert here[-1] is None and None not in here[:-1]
    assert DigestHelper(dirs).results() == here


def test_a_helper_that_cannot_run_gives_nothing_to_trust(tmp_path, monkeypatch):
    (tmp_path / "files").mkdir()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    assert DigestHelper([str(tmp_path / "files")]).results() is None
    monkeypatch.setattr(sys, "executable", "/bin/false")  # runs, and fails
    assert DigestHelper([str(tmp_path / "files")]).results() is None
