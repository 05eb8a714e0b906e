"""The cache of the runtime's compiled object: where it lives, that a second build reuses it,
that a damaged or unwritable cache never breaks a build, and that the library's bytes never
depend on whether the cache was hit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import aotml
from aotml.errors import CompileError
from aotml.package import artifact
from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler 'cc' on PATH")

SOURCE = """model c {
    input x: f32[2, 3]
    output y = relu(x) * 2
}
"""


def _build(folder: Path) -> bytes:
    """Build SOURCE under `folder`; the library is always named c.so (its soname is in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "c.mlg").write_text(SOURCE)
    return aotml.build(folder / "c.mlg", folder / "out" / "c.so").read_bytes()


def _entries(cache: Path) -> list[Path]:
    folder = cache / "runtime"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def compiles(monkeypatch) -> list[list[str]]:
    """The compiler commands run so far that compile the runtime's source."""
    seen: list[list[str]] = []
    run = subprocess.run

    def counting(cmd, *args, **kwargs):
        if isinstance(cmd, list) and "aotml_runtime.c" in cmd:
            seen.append(cmd)
        return run(cmd, *args, **kwargs)

    monkeypatch.setattr(artifact.subprocess, "run", counting)
    return seen


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache for every test here, which then never touches the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("AOTML_CACHE_DIR", str(folder))
    return folder


def test_second_build_reuses_the_object_and_gives_the_same_bytes(tmp_path, cache, compiles):
    first = _build(tmp_path / "one")
    assert len(compiles) == 1
    (entry,) = _entries(cache)
    assert entry.suffix == ".o" and len(entry.stem) == 64
    stamp = entry.stat().st_mtime_ns
    second = _build(tmp_path / "a" / "different" / "place")
    assert len(compiles) == 1
    assert entry.stat().st_mtime_ns == stamp
    assert _entries(cache) == [entry]
    assert first == second


def test_library_is_the_same_with_and_without_the_cache(tmp_path, cache, monkeypatch):
    cold = _build(tmp_path / "cold")
    warm = _build(tmp_path / "warm")
    monkeypatch.setenv("AOTML_CACHE_DIR", "")
    uncached = _build(tmp_path / "uncached")
    assert cold == warm == uncached


def test_no_path_of_the_build_is_in_the_cached_object(tmp_path, cache):
    _build(tmp_path / "one")
    (entry,) = _entries(cache)
    data = entry.read_bytes()
    for path in (str(tmp_path), str(REPO), "aotml-build-"):
        assert path.encode() not in data


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "digest_only"])
def test_damaged_entry_is_compiled_again_and_replaced(tmp_path, cache, compiles, damage):
    reference = _build(tmp_path / "reference")
    (entry,) = _entries(cache)
    good = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(good[:len(good) // 2])
    elif damage == "flipped":
        middle = len(good) // 2
        entry.write_bytes(good[:middle] + bytes([good[middle] ^ 0x40]) + good[middle + 1:])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:
        entry.write_bytes(good[-32:])
    assert _build(tmp_path / "again") == reference
    assert len(compiles) == 2
    assert entry.read_bytes() == good
    assert _entries(cache) == [entry]  # and no temporary file left behind


def test_cache_that_cannot_be_made_still_builds(tmp_path, monkeypatch, compiles):
    reference = _build(tmp_path / "reference")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AOTML_CACHE_DIR", str(blocker / "cache"))
    assert _build(tmp_path / "one") == reference
    assert _build(tmp_path / "two") == reference
    assert len(compiles) == 3


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_cache_still_builds(tmp_path, monkeypatch, compiles):
    reference = _build(tmp_path / "reference")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o555)
    monkeypatch.setenv("AOTML_CACHE_DIR", str(cache))
    try:
        assert _build(tmp_path / "one") == reference
    finally:
        cache.chmod(0o755)
    assert not (cache / "runtime").exists()


def test_empty_cache_dir_turns_the_cache_off(tmp_path, monkeypatch, compiles):
    monkeypatch.setenv("AOTML_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _build(tmp_path / "one")
    _build(tmp_path / "two")
    assert len(compiles) == 2
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_cache_dir_defaults_to_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("AOTML_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _build(tmp_path / "one")
    assert len(_entries(tmp_path / "xdg" / "aotml")) == 1
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/so/ignored")
    _build(tmp_path / "two")
    assert len(_entries(tmp_path / "home" / ".cache" / "aotml")) == 1
    assert not (tmp_path / "two" / "relative").exists()


def test_key_tracks_the_compiler_and_the_runtime_sources(tmp_path, cache, monkeypatch,
                                                           compiles):
    reference = _build(tmp_path / "reference")
    # the same compiler named another way: another entry, the same library
    monkeypatch.setenv("CC", shutil.which("cc"))
    assert _build(tmp_path / "absolute-cc") == reference
    assert len(_entries(cache)) == 2
    # a changed runtime source: another entry again
    runtime = tmp_path / "runtime"
    shutil.copytree(artifact.runtime_dir(), runtime)
    with open(runtime / "aotml_runtime.c", "a") as f:
        f.write("\n/* changed */\n")
    monkeypatch.setattr(artifact, "runtime_dir", lambda: runtime)
    _build(tmp_path / "changed")
    assert len(_entries(cache)) == 3
    assert len(compiles) == 3


@pytest.mark.parametrize("cached", [True, False])
def test_missing_compiler_is_reported_as_before(tmp_path, monkeypatch, cached):
    monkeypatch.setenv("AOTML_CACHE_DIR", str(tmp_path / "cache") if cached else "")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(CompileError, match="no C compiler '.*no-such-cc' found to link the "
                                           r"library \(set CC\)"):
        _build(tmp_path / "one")


def test_concurrent_builds_share_one_cold_cache(tmp_path, cache):
    """Builds in several processes at once, on an empty cache: each gets a whole object."""
    script = ("import sys, aotml; aotml.build(sys.argv[1] + '/c.mlg', "
              "sys.argv[1] + '/out/c.so')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    folders = [tmp_path / f"p{k}" for k in range(4)]
    procs = []
    for folder in folders:
        folder.mkdir()
        (folder / "c.mlg").write_text(SOURCE)
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(folder)], env=env,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    libraries = {(folder / "out" / "c.so").read_bytes() for folder in folders}
    assert len(libraries) == 1
    assert len(_entries(cache)) == 1  # no temporary file left behind
    assert _build(tmp_path / "after") in libraries
