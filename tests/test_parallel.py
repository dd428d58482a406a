"""The worker pool: same results in the same order as one process, workers only when worth it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mllint import Settings
from mllint import runner
from mllint.runner import Mode, check_files, default_jobs

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted(p for p in (ROOT / "tests" / "fixtures").glob("*/*.py") if not p.name.endswith(".fixed.py"))
SETTINGS = Settings()


def _run(paths, jobs, mode=Mode(), use_cache=False):
    return list(check_files(paths, lambda p: SETTINGS, lambda s: mode, jobs=jobs, use_cache=use_cache))


def _summary(results):
    return [(r.path, [(d.code, d.location, d.message, d.fix) for d in r.diagnostics]) for r in results]


def test_two_jobs_give_one_jobs_results_in_the_same_order():
    paths = FIXTURES[:24]
    assert len(paths) > runner.FAST_PATH_FILES
    serial = _run(paths, 1)
    parallel = _run(paths, 2)
    assert [r.path for r in parallel] == [runner.display_path(p) for p in paths]
    assert _summary(parallel) == _summary(serial)
    assert any(r.diagnostics for r in parallel)
    shown = next(r for r in parallel if r.diagnostics)
    assert shown.source is not None  # findings come back with the text their frames need


def test_results_are_streamed():
    results = check_files(FIXTURES[:12], lambda p: SETTINGS, lambda s: Mode(), jobs=2, use_cache=False)
    assert iter(results) is results  # a generator: the caller renders each as it comes
    first = next(results)
    assert first.path == runner.display_path(FIXTURES[0])
    results.close()  # stopping early shuts the pool down


def test_a_handful_of_files_starts_no_workers(monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("a pool was started")

    monkeypatch.setattr("concurrent.futures.ProcessPoolExecutor", no_pool)
    assert len(_run(FIXTURES[: runner.FAST_PATH_FILES], 2)) == runner.FAST_PATH_FILES
    assert len(_run(FIXTURES[:10], 1)) == 10


def test_fixing_runs_in_workers_write_the_files(tmp_path):
    paths = []
    for i, fixture in enumerate(FIXTURES[:10]):
        path = tmp_path / f"f{i}.py"
        path.write_bytes(fixture.read_bytes())
        paths.append(path)
    mode = Mode(fix=True, unsafe=True)
    results = _run(paths, 2, mode=mode)
    fixed = [r for r in results if r.fixed]
    assert fixed
    for result in fixed:
        assert Path(tmp_path / Path(result.path).name).read_text(encoding="utf-8") != ""
    assert _run(paths, 2, mode=mode) and all(not r.fixed for r in _run(paths, 2, mode=mode))


def _die(i):
    os._exit(3)  # as the kernel's OOM killer would


def test_a_dead_worker_does_not_lose_files(monkeypatch):
    monkeypatch.setattr(runner, "_worker_check", _die)
    paths = FIXTURES[:8]
    assert _summary(_run(paths, 2)) == _summary(_run(paths, 1))


def test_default_jobs_are_the_available_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert default_jobs() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_jobs() == 1


def test_cli_jobs(tmp_path):
    directory = ROOT / "tests" / "fixtures"
    runs = [subprocess.run([sys.executable, "-m", "mllint", "--no-cache", "-j", jobs, str(directory),
                            "--output-format", "json"], capture_output=True, text=True)
            for jobs in ("1", "2")]
    assert runs[0].stdout == runs[1].stdout and runs[0].returncode == runs[1].returncode == 1
    bad = subprocess.run([sys.executable, "-m", "mllint", "-j", "0", str(directory)], capture_output=True, text=True)
    assert bad.returncode == 2
