"""The durability module: atomic writes, hashing copies into several sinks, commit rules."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from imalinkd import durable


def test_atomic_write_json_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "m.json"
    durable.atomic_write_json(p, {"a": 1})
    durable.atomic_write_json(p, {"b": "\udcff"})  # a surrogate from a non-UTF-8 name stays representable
    assert json.loads(p.read_text()) == {"b": "\udcff"}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    p = tmp_path / "m.json"
    durable.atomic_write_json(p, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        durable.atomic_write_json(p, {"x": Boom()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_one_read_feeds_several_sinks_and_the_hash(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src"
    src.write_bytes(data)
    sinks = [durable.Sink(str(tmp_path / d / "f.bin")) for d in ("a", "b")]
    for s in sinks:
        s.open()
    reads = []
    fd = os.open(src, os.O_RDONLY)
    real_readv = os.readv

    def counting_readv(f, bufs):
        n = real_readv(f, bufs)
        reads.append(n)
        return n

    os.readv = counting_readv
    try:
        out = durable.copy_to_sinks(fd, sinks, chunk=1 << 20)
    finally:
        os.readv = real_readv
        os.close(fd)
    assert sum(reads) == len(data)  # every source byte read exactly once
    assert out.sha256 == hashlib.sha256(data).hexdigest() and out.size == len(data)
    for s in sinks:
        s.finish(None)
        assert s.verify("sha256", out.sha256, out.size) is None
        assert not os.path.exists(s.target)  # nothing under the final name before commit
        s.commit()
        assert open(s.target, "rb").read() == data and not os.path.exists(s.temp)


def test_verify_detects_a_changed_byte_on_disk(tmp_path):
    sink = durable.Sink(str(tmp_path / "f"))
    sink.open()
    sink.write(memoryview(b"hello world"))
    sink.finish(None)
    with open(sink.temp, "r+b") as f:
        f.write(b"J")
    good = hashlib.sha256(b"hello world").hexdigest()
    assert "sha256 on disk" in sink.verify("sha256", good, 11)
    assert sink.verify("size", good, 11) is None
    assert "size on disk" in sink.verify("size", good, 12)


def test_commit_never_replaces_an_existing_file(tmp_path):
    (tmp_path / "f").write_bytes(b"keep me")
    sink = durable.Sink(str(tmp_path / "f"))
    sink.open()
    sink.write(memoryview(b"new"))
    sink.finish(None)
    with pytest.raises(FileExistsError):
        sink.commit()
    assert (tmp_path / "f").read_bytes() == b"keep me"
    sink.discard()
    assert not os.path.exists(sink.temp)


def test_temp_names_are_short_even_for_long_source_names(tmp_path):
    name = "x" * 250
    sink = durable.Sink(str(tmp_path / name))
    assert len(os.path.basename(sink.temp)) < 40
    sink.open()
    sink.discard()


def test_remove_partials_keeps_committed_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / (durable.TEMP_PREFIX + "abc")).write_bytes(b"half")
    (tmp_path / "d" / "IMG_1.JPG").write_bytes(b"whole")
    assert durable.remove_partials(tmp_path) == 1
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["IMG_1.JPG"]


def test_cancel_stops_a_copy(tmp_path):
    import threading

    src = tmp_path / "src"
    src.write_bytes(os.urandom(1 << 20))
    cancel = threading.Event()
    cancel.set()
    sink = durable.Sink(str(tmp_path / "out"))
    sink.open()
    fd = os.open(src, os.O_RDONLY)
    with pytest.raises(InterruptedError):
        durable.copy_to_sinks(fd, [sink], cancel=cancel)
    os.close(fd)
    sink.discard()


@pytest.mark.parametrize("obj", [
    {"a": [1, 2.5, None, True, {"b": "text"}], "empty": [], "none": {}},
    {"name": "Ålesund"},  # non-ASCII: escaped
    {"raw": "\udcff.JPG"},  # a non-UTF-8 name kept as a surrogate
    {"big": 123456789012345678901234567890},
    {1: "an integer key"},
])
def test_json_bytes_are_the_standard_librarys_indented_ascii_json(obj):
    import json

    assert durable.json_bytes(obj) == (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def test_json_bytes_writes_nan_as_null():
    import json

    assert json.loads(durable.json_bytes({"x": float("nan")})) == {"x": None}
