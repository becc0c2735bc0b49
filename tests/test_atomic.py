"""keras_ntk.atomic: files and directories are replaced whole, failures leave the old version.

Failures are injected where a real crash or error would strike (while writing,
at the rename); readers run concurrently with repeated replacements and must
always find the target complete.
"""

import json
import os
import sys
import threading

import pytest

from keras_ntk import atomic


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "run.json"
    atomic.write_json(path, {"a": 1})
    atomic.write_json(path, {"a": 2}, indent=1)
    assert json.loads(path.read_text()) == {"a": 2}
    assert _names(path.parent) == ["run.json"]
    atomic.write_text(path, "text")
    atomic.write_bytes(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    atomic.write_text(path, "old")
    with pytest.raises(TypeError):
        atomic.write_json(path, {"bad": object()})
    assert path.read_text() == "old" and _names(tmp_path) == ["report.md"]

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old" and _names(tmp_path) == ["report.md"]


def test_concurrent_writers_of_one_file_use_their_own_temporaries(tmp_path):
    """A fixed temporary name would let two writers interleave into one file."""
    path = tmp_path / "index.md"
    payloads = [json.dumps({"writer": i, "data": [i] * 20_000}) for i in range(4)]
    errors = []

    def write(text):
        try:
            for _ in range(10):
                atomic.write_text(path, text)
        except Exception as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=write, args=(text,)) for text in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_text() in payloads
    assert _names(tmp_path) == ["index.md"]


def _fill(directory, text):
    (directory / "a.txt").write_text(text)
    (directory / "nested").mkdir()
    (directory / "nested" / "b.txt").write_text(text)


def test_staged_directory_creates_replaces_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "posterior"
    with atomic.staged_directory(target) as staging:
        assert staging.parent == tmp_path and not target.exists()
        _fill(staging, "first")
    assert (target / "nested" / "b.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic.staged_directory(target) as staging:
            (staging / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert _names(tmp_path) == ["posterior"]
    assert (target / "a.txt").read_text() == "first"
    with atomic.staged_directory(target) as staging:
        (staging / "c.txt").write_text("second")
    assert _names(tmp_path) == ["posterior"] and _names(target) == ["c.txt"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_an_existing_directory_is_replaced_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    elif atomic._RENAMEAT2 is None and sys.platform.startswith("linux"):
        pytest.fail("renameat2 is expected on Linux with glibc >= 2.28")
    target = tmp_path / "model"
    with atomic.staged_directory(target) as staging:
        _fill(staging, "v0")
    for i in range(1, 4):
        with atomic.staged_directory(target) as staging:
            _fill(staging, f"v{i}")
        assert (target / "a.txt").read_text() == (target / "nested" / "b.txt").read_text() == f"v{i}"
        assert _names(tmp_path) == ["model"]


def test_readers_never_miss_a_directory_while_it_is_replaced(tmp_path):
    """With the atomic exchange the target path always holds a complete version."""
    target = tmp_path / "model"
    with atomic.staged_directory(target) as staging:
        _fill(staging, "0")
    stop, seen, problems = threading.Event(), set(), []

    def read():
        while not stop.is_set():
            try:
                first = (target / "a.txt").read_text()
                second = (target / "nested" / "b.txt").read_text()
            except OSError as error:
                problems.append(repr(error))
                continue
            seen.add(first)
            if first != second:  # both files of one version (a reader may straddle two swaps)
                seen.add(f"mixed {first} {second}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 60):
            with atomic.staged_directory(target) as staging:
                _fill(staging, str(i))
    finally:
        stop.set()
        reader.join()
    assert problems == []
    assert len(seen) > 1


def test_a_failed_publish_keeps_the_old_directory(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic.staged_directory(target) as staging:
        _fill(staging, "old")
    monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    real_rename = os.rename

    def failing_rename(source, destination):
        if os.path.basename(source).startswith(".model.") and str(destination) == str(target):
            raise OSError("rename failed")  # the new version's rename into place
        return real_rename(source, destination)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        with atomic.staged_directory(target) as staging:
            _fill(staging, "new")
    assert (target / "a.txt").read_text() == "old"
    assert _names(tmp_path) == ["model"]


def test_rename_new_directory_never_replaces(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError):
        atomic.rename_new_directory(source, tmp_path / "empty")
    atomic.rename_new_directory(source, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "f").read_text() == "x"
    assert _names(tmp_path) == ["empty", "fresh"]
