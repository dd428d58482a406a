"""The result cache: hits equal fresh results, nothing stale is ever served, and it is safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mllint import Settings
from mllint.cache import Cache, encode_diagnostic, run_fingerprint, settings_fingerprint
from mllint.core.diagnostic import Diagnostic, Location, Severity
from mllint.runner import Mode, check_file, check_files
from mllint.settings import parse_version

ROOT = Path(__file__).resolve().parent.parent
MLL101_SRC = (ROOT / "tests" / "fixtures" / "MLL101" / "mistral_lora_trainer.py").read_text(encoding="utf-8")
CHECK = Mode()


def _check(path: Path, cache: Cache, settings: Settings = Settings(), mode: Mode = CHECK):
    return check_file(path, settings, mode, cache)


def _entries(cache: Cache):
    return sorted(p for p in cache.entries.rglob("*.json"))


def _fake(code: str = "MLL101") -> Diagnostic:
    return Diagnostic(code=code, name="pad-token-is-eos", message="from the cache", severity=Severity.ERROR,
                      location=Location(1, 1), end_location=Location(1, 2))


def _poison(cache: Cache, path: Path, settings: Settings = Settings()) -> None:
    """Make the entry of ``path`` say something a real check never would."""
    key = cache.key(str(path), str(path), settings_fingerprint(settings), path.read_bytes())
    cache.put(key, [_fake()])


def test_a_hit_is_the_fresh_result_and_the_directory_is_tagged(tmp_path):
    cache = Cache(tmp_path / ".mllint_cache")
    path = tmp_path / "train.py"
    path.write_text(MLL101_SRC, encoding="utf-8")
    fresh = _check(path, cache)
    assert [d.code for d in fresh.diagnostics] == ["MLL101"] and len(_entries(cache)) == 1
    hit = _check(path, cache)
    assert hit.diagnostics == fresh.diagnostics and hit.source == fresh.source
    assert (cache.directory / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert (cache.directory / ".gitignore").read_text().splitlines()[-1] == "*"


def test_the_cache_is_read(tmp_path):
    cache = Cache(tmp_path / "c")
    path = tmp_path / "train.py"
    path.write_text("x = 1\n", encoding="utf-8")
    _poison(cache, path)
    assert [d.message for d in _check(path, cache).diagnostics] == ["from the cache"]


def test_changed_content_is_checked_again(tmp_path):
    cache = Cache(tmp_path / "c")
    path = tmp_path / "train.py"
    path.write_text("x = 1\n", encoding="utf-8")
    _poison(cache, path)
    path.write_text(MLL101_SRC, encoding="utf-8")  # same path, new content
    assert [d.code for d in _check(path, cache).diagnostics] == ["MLL101"]


@pytest.mark.parametrize("changes", [
    {"select": ("MLL3",)}, {"ignore": ("MLL101",)}, {"extend_select": ("MLL901",)}, {"preview": True},
    {"target_versions": {"trl": parse_version("0.15", "t")}}, {"unsafe_fixes": True}, {"triage": False},
    {"rule_options": {"MLL101": {"pad-token": "<|pad|>"}}}, {"per_file_ignores": (("*.py", ("MLL1",)),)},
    {"root": "/elsewhere"},
])
def test_every_setting_that_can_change_a_result_is_in_the_key(tmp_path, changes):
    assert settings_fingerprint(Settings()) != settings_fingerprint(Settings(**changes))


def test_discovery_settings_are_not_in_the_key():
    base = settings_fingerprint(Settings())
    assert settings_fingerprint(Settings(extend_exclude=("x",), respect_gitignore=False, cache_dir="/c")) == base


def test_path_content_and_mllint_are_in_the_key(tmp_path, monkeypatch):
    cache = Cache(tmp_path / "c")
    key = cache.key("a.py", "a.py", "s", b"x = 1\n")
    assert key != cache.key("b.py", "b.py", "s", b"x = 1\n")
    assert key != cache.key("a.py", "a.py", "s", b"x = 2\n")
    assert key != cache.key("a.py", "a.py", "t", b"x = 1\n")
    import mllint.cache as module

    monkeypatch.setattr(module, "_RUN_FINGERPRINT", None)
    monkeypatch.setattr("mllint.__version__", "999.0")
    assert run_fingerprint() != module._digest(None) and cache.key("a.py", "a.py", "s", b"x = 1\n") != key


def test_editing_mllint_itself_changes_the_run_fingerprint(tmp_path):
    from mllint.cache import _tree_stamp

    package = tmp_path / "pkg"
    package.mkdir()
    module = package / "rule.py"
    module.write_text("A = 1\n")
    before = _tree_stamp(package)
    module.write_text("A = 22\n")
    assert _tree_stamp(package) != before


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"key": "other", "diagnostics": []}', b"\xff\xfe",
                                     b'{"key": "KEY", "diagnostics": [{"c": 1}]}'])
def test_a_corrupt_entry_is_a_miss_and_is_rewritten(tmp_path, garbage):
    cache = Cache(tmp_path / "c")
    path = tmp_path / "train.py"
    path.write_text(MLL101_SRC, encoding="utf-8")
    fresh = _check(path, cache)
    [entry] = _entries(cache)
    entry.write_bytes(garbage.replace(b"KEY", entry.parent.name.encode() + entry.stem.encode()))
    assert _check(path, cache).diagnostics == fresh.diagnostics
    assert json.loads(entry.read_bytes())["diagnostics"] == [encode_diagnostic(d) for d in fresh.diagnostics]


@pytest.mark.parametrize("mode", [Mode(fix=True), Mode(fix=True, diff=True), Mode(add_noqa=True, diff=True)])
def test_fixing_runs_never_use_the_cache(tmp_path, mode):
    cache = Cache(tmp_path / "c")
    path = tmp_path / "train.py"
    path.write_text("x = 1\n", encoding="utf-8")
    _poison(cache, path)
    result = _check(path, cache, mode=mode)
    assert all(d.message != "from the cache" for d in result.diagnostics)


def test_internal_errors_and_unreadable_files_are_not_stored(tmp_path):
    cache = Cache(tmp_path / "c")
    cache.put("ab" * 32, [_fake("MLL999")])
    cache.put("cd" * 32, [_fake("MLL904")])
    assert _entries(cache) == []


def test_notebooks_are_cached_with_their_cells(tmp_path):
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"language": "python"}},
                "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# title"]},
                          {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                           "source": MLL101_SRC.splitlines(keepends=True)}]}
    path = tmp_path / "eda.ipynb"
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    cache = Cache(tmp_path / "c")
    fresh = _check(path, cache)
    hit = _check(path, cache)
    assert [d.cell for d in fresh.diagnostics] == [2]
    assert hit.diagnostics == fresh.diagnostics and hit.cells == fresh.cells and hit.source == fresh.source


def _mllint(*args: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mllint", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_cli_cache_no_cache_and_cache_dir(tmp_path):
    (tmp_path / "train.py").write_text(MLL101_SRC, encoding="utf-8")
    cold = _mllint("--no-cache", ".", cwd=tmp_path)
    assert cold.returncode == 1 and not (tmp_path / ".mllint_cache").exists()
    first = _mllint(".", cwd=tmp_path)
    assert (tmp_path / ".mllint_cache" / "CACHEDIR.TAG").is_file()
    second = _mllint(".", cwd=tmp_path)
    assert cold.stdout == first.stdout == second.stdout and second.returncode == 1
    _mllint(".", "--cache-dir", "elsewhere", cwd=tmp_path)
    assert (tmp_path / "elsewhere" / "CACHEDIR.TAG").is_file()
    _mllint(".", cwd=tmp_path, env={"MLLINT_CACHE_DIR": str(tmp_path / "from-env")})
    assert (tmp_path / "from-env" / "CACHEDIR.TAG").is_file()


def test_cache_dir_in_the_config_is_relative_to_it(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.mllint]\ncache-dir = "build/lint-cache"\n')
    (project / "src" / "train.py").write_text("x = 1\n")
    assert _mllint("src", cwd=project).returncode == 0
    assert (project / "build" / "lint-cache" / "CACHEDIR.TAG").is_file()
    (project / "pyproject.toml").write_text("[tool.mllint]\ncache-dir = 3\n")
    bad = _mllint("src", cwd=project)
    assert bad.returncode == 2 and "cache-dir" in bad.stderr


def test_concurrent_runs_share_the_cache_safely(tmp_path):
    for i in range(12):
        (tmp_path / f"m{i}.py").write_text(MLL101_SRC if i % 3 == 0 else f"x = {i}\n", encoding="utf-8")
    command = [sys.executable, "-m", "mllint", "-j", "2", "."]
    runs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    outputs = [p.communicate()[0] for p in runs]
    assert len(set(outputs)) == 1 and outputs[0].count("MLL101") == 4
    cache = Cache(tmp_path / ".mllint_cache")
    entries = _entries(cache)
    assert len(entries) == 12 and not list(cache.directory.rglob("*.tmp"))
    for entry in entries:
        json.loads(entry.read_bytes())
    assert _mllint(".", cwd=tmp_path).stdout == outputs[0]


def test_check_files_streams_hits_and_misses_in_order(tmp_path):
    paths = []
    for i in range(8):
        path = tmp_path / f"f{i}.py"
        path.write_text(MLL101_SRC if i % 2 else "x = 1\n", encoding="utf-8")
        paths.append(path)
    settings = Settings(cache_dir=str(tmp_path / "c"))
    first = list(check_files(paths, lambda p: settings, lambda s: CHECK, jobs=1))
    (tmp_path / "f3.py").write_text("y = 2\n", encoding="utf-8")
    second = list(check_files(paths, lambda p: settings, lambda s: CHECK, jobs=1))
    assert [r.path for r in second] == [r.path for r in first]
    assert [len(r.diagnostics) for r in second] == [0, 1, 0, 0, 0, 1, 0, 1]
