"""manifest-sha256.txt: each session checked by coreutils' sha256sum alone, kept in step
with metadata.json by import, resume, adopt and the write-checksums command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cards import make_card
from imalinkd import checksums, manifest as mf
from imalinkd.catalog import Catalog, ImportSession
from imalinkd.config import parse_config
from imalinkd.importer import import_source, resume_session, rollback_session
from imalinkd.storage import init_storage

REPO = Path(__file__).resolve().parents[1]
ODD_NAMES = [
    b"DCIM/100CANON/IMG 0001 copy.JPG",          # spaces
    b"DCIM/100CANON/\xff\xfe_not_utf8_\xe9.JPG",   # not UTF-8
    "DCIM/100CANON/Bergen_ø_å.JPG".encode(),      # UTF-8, not ASCII
    b"DCIM/100CANON/back\\slash.JPG",              # sha256sum's escaped line form
    b"DCIM/100CANON/two\nlines.JPG",
    b"DCIM/100CANON/100%.JPG",
]


def config(tmp_path: Path, **imp):
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "storage": {"root": str(tmp_path / "archive")},
        "import": {"thumbnails": False, **imp},
        "api": {"listen": ""},
    })


def odd_card(root: Path) -> dict[bytes, bytes]:
    files = {}
    for i, name in enumerate(ODD_NAMES):
        path = os.path.join(os.fsencode(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = f"photo {i}".encode() * 100
        with open(path, "wb") as f:
            f.write(data)
        files[name] = data
    return files


def sha256sum_check(session: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sha256sum", "--strict", "-c", checksums.FILENAME], cwd=session, capture_output=True)


def test_sha256sum_checks_a_session_with_odd_names_and_finds_a_flipped_byte(tmp_path):
    files = odd_card(tmp_path / "card")
    result = import_source(config(tmp_path), tmp_path / "card")
    session = Path(result.storage_path)
    raw = (session / checksums.FILENAME).read_bytes()
    assert raw.count(b"\n") == len(files)  # a line feed in a name is written escaped
    ok = sha256sum_check(session)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(b": OK\n") == len(files)

    victim = os.path.join(os.fsencode(session), b"files/" + ODD_NAMES[1])
    with open(victim, "r+b") as f:
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0x01]))
    bad = sha256sum_check(session)
    assert bad.returncode == 1
    assert b"files/" + ODD_NAMES[1] + b": FAILED" in bad.stdout
    assert bad.stdout.count(b": OK\n") == len(files) - 1


def test_lines_are_exactly_what_sha256sum_prints(tmp_path):
    odd_card(tmp_path / "card")
    session = Path(import_source(config(tmp_path), tmp_path / "card").storage_path)
    names = sorted(b"files/" + n for n in ODD_NAMES)
    theirs = subprocess.run(["sha256sum", "--", *names], cwd=session, capture_output=True, check=True).stdout
    assert (session / checksums.FILENAME).read_bytes() == theirs
    assert checksums.parse(theirs) == {os.fsdecode(b"files/" + n): hashlib.sha256((session / "files").joinpath(os.fsdecode(n)).read_bytes()).hexdigest()
                                       for n in ODD_NAMES}


def test_plain_names_form_a_bagit_payload_manifest(tmp_path):
    card = make_card(tmp_path / "card", shots=3)
    session = Path(import_source(config(tmp_path), card.root).storage_path)
    lines = (session / checksums.FILENAME).read_text("utf-8").splitlines()
    assert len(lines) == len(card.files)
    for line in lines:  # RFC 8493 §2.1.3: checksum, whitespace, path relative to the base directory
        digest, path = line.split("  ", 1)
        assert len(digest) == 64 and path.startswith("files/") and path[6:] in card.files


def test_a_resumed_session_lists_every_file_and_a_rollback_leaves_nothing(tmp_path):
    import threading

    cfg = config(tmp_path, workers=1)
    card = make_card(tmp_path / "card", shots=8)
    cancel = threading.Event()

    def stop_after_two(p):
        if p.files_done >= 2:
            cancel.set()

    first = import_source(cfg, card.root, cancel=cancel, progress=stop_after_two)
    assert first.copy_status == "failed"
    session = Path(first.storage_path)
    listed = checksums.parse((session / checksums.FILENAME).read_bytes())
    assert 2 <= len(listed) < len(card.files)
    assert sha256sum_check(session).returncode == 0
    again = resume_session(cfg, first.session_uuid)
    assert again.copy_status == "completed"
    assert sha256sum_check(session).returncode == 0
    assert len(checksums.parse((session / checksums.FILENAME).read_bytes())) == len(card.files)
    rollback_session(cfg, first.session_uuid, force=True)
    assert not session.exists()


def test_a_legacy_session_has_none_until_adopted(tmp_path):
    from imalinkd import legacy

    cfg = config(tmp_path)
    card = make_card(tmp_path / "card", shots=3)
    catalog = Catalog.open(cfg)
    try:
        res = legacy.import_in_place(cfg, catalog, str(card.root))
        sdir = Path(res.storage_path)
        assert not (sdir / checksums.FILENAME).exists()
        assert legacy.adopt(cfg, catalog, res.import_session_id).ok
        assert sha256sum_check(sdir).returncode == 0
        assert len(checksums.parse((sdir / checksums.FILENAME).read_bytes())) == len(card.files)
    finally:
        catalog.close()


def test_write_checksums_gives_an_older_session_its_file(tmp_path):
    cfg = config(tmp_path)
    card = make_card(tmp_path / "card", shots=3)
    session = Path(import_source(cfg, card.root).storage_path)
    made = (session / checksums.FILENAME).read_bytes()
    (session / checksums.FILENAME).unlink()  # as a session written before the file existed
    toml = tmp_path / "imalinkd.toml"
    toml.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n[storage]\nroot = "{tmp_path}/archive"\n[api]\nlisten = ""\n')
    run = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(toml), "write-checksums", str(tmp_path / "archive"), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out[0]["written"] == [session.name]
    assert (session / checksums.FILENAME).read_bytes() == made
    again = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(toml), "write-checksums", "--all", "--json"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert json.loads(again.stdout)[0]["unchanged"] == [session.name]


def test_write_checksums_needs_a_path_or_all(tmp_path):
    run = subprocess.run([sys.executable, "-m", "imalinkd", "write-checksums"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2 and "--all" in run.stderr


def test_a_symlink_in_its_place_is_replaced_not_followed(tmp_path):
    card = make_card(tmp_path / "card", shots=2)
    session = Path(import_source(config(tmp_path), card.root).storage_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (session / checksums.FILENAME).unlink()
    (session / checksums.FILENAME).symlink_to(outside)
    assert checksums.write(session, mf.read_manifest(session))
    assert outside.read_text() == "keep me"
    assert not (session / checksums.FILENAME).is_symlink() and sha256sum_check(session).returncode == 0


def test_the_documented_recipe_makes_a_bag_a_bagit_validator_accepts(tmp_path):
    import bagit

    card = make_card(tmp_path / "card", shots=3)
    (card.root / "DCIM/100CANON/IMG 0099 copy.JPG").write_bytes(b"spaces are fine in BagIt too")
    session = Path(import_source(config(tmp_path), card.root).storage_path)
    recipe = (REPO / "docs" / "format.md").read_text()
    script = recipe[recipe.index("mkdir bag"):recipe.index("```", recipe.index("mkdir bag"))]
    subprocess.run(["sh", "-c", script.replace("SESSION", str(session))], cwd=tmp_path, check=True)
    bag = bagit.Bag(str(tmp_path / "bag"))
    bag.validate()  # raises BagValidationError naming any file whose checksum differs
    assert len(bag.payload_entries()) == len(card.files) + 1
    (tmp_path / "bag" / "data" / "DCIM" / "100CANON" / "IMG_0001.CR2").write_bytes(b"rotted")
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(tmp_path / "bag")).validate()


def test_a_crash_between_the_two_writes_leaves_the_checksums_ahead_never_behind(tmp_path, monkeypatch):
    from imalinkd import durable

    card = make_card(tmp_path / "card", shots=2)
    session = Path(import_source(config(tmp_path), card.root).storage_path)
    m = mf.read_manifest(session)
    extra = session / "files" / "DCIM" / "EXTRA.JPG"  # committed after the last write
    extra.write_bytes(b"new")
    m.file_manifest.append(mf.FileEntry("DCIM/EXTRA.JPG", "files/DCIM/EXTRA.JPG", 3, hashlib.sha256(b"new").hexdigest(), None))

    def power_cut(*_a, **_k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable, "atomic_write_json", power_cut)
    with pytest.raises(OSError):
        mf.write_manifest(session, m)
    assert len(mf.read_manifest(session).file_manifest) == len(card.files)  # the manifest as before
    assert "files/DCIM/EXTRA.JPG" in checksums.parse((session / checksums.FILENAME).read_bytes())
    assert sha256sum_check(session).returncode == 0
