"""The pre-commit hooks of ``.pre-commit-hooks.yaml``, run for real with ``pre-commit try-repo``.

``try-repo`` on a local checkout takes its committed state plus tracked changes, not new
untracked files; so the hooks repository used here is a snapshot of this working tree (the
files git lists as tracked or untracked-but-not-ignored), committed in a temporary repository.
pre-commit installs mllint from it into its own virtualenv (from PyPI: about half a minute),
once: every hook run below reuses that environment (``PRE_COMMIT_HOME`` is a temporary
directory, so nothing lands in the user's cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from clihelp import CLEAN_SRC, MLL101_FIXED, MLL101_SRC, run, write

ROOT = Path(__file__).resolve().parent.parent
HOOKS_FILE = ROOT / ".pre-commit-hooks.yaml"
_SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache", ".mllint_cache"}

GIT = ["git", "-c", "user.name=mllint tests", "-c", "user.email=tests@example.invalid",
       "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]


def _hooks() -> Dict[str, dict]:
    return {hook["id"]: hook for hook in yaml.safe_load(HOOKS_FILE.read_text(encoding="utf-8"))}


def test_hook_definitions():
    hooks = _hooks()
    assert set(hooks) == {"mllint", "mllint-fix"}
    for hook in hooks.values():
        assert hook["language"] == "python"
        assert hook["entry"] == "mllint check --force-exclude"  # kept when users override args
        assert hook["types_or"] == ["python", "pyi", "jupyter"]
        assert hook["require_serial"] is True
    assert hooks["mllint"]["args"] == []
    assert hooks["mllint-fix"]["args"] == ["--fix", "--exit-non-zero-on-fix"]


def test_hook_entry_with_no_file_to_check(tmp_path):
    """pre-commit does not run a hook when no file matches; with ``always_run: true`` it runs the
    entry without file names (mllint then checks the current directory), and when every name it
    passes is excluded, nothing is checked. Both are a clean exit."""
    entry = _hooks()["mllint"]["entry"].split()[1:]
    proc = run(entry, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    write(tmp_path, {"build/train.py": MLL101_SRC})
    proc = run([*entry, "build/train.py"], tmp_path)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr


def _git(args: List[str], cwd: Path, env: Dict[str, str]) -> str:
    proc = subprocess.run([*GIT, *args], cwd=str(cwd), env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


def _source_files(env: Dict[str, str]) -> List[str]:
    """This checkout's files as git sees them (tracked, or untracked and not ignored)."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=str(ROOT), env=env, capture_output=True, text=True)
        if out.returncode == 0:
            return [name for name in out.stdout.split("\0") if name and (ROOT / name).is_file()]
    found = []  # not a git checkout (an unpacked sdist): everything but caches and environments
    for directory, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(directory, f), ROOT) for f in files]
    return found


def _snapshot(target: Path, env: Dict[str, str]) -> None:
    for name in _source_files(env):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination)
    _git(["init", "-q"], target, env)
    _git(["add", "-A"], target, env)
    _git(["commit", "-q", "-m", "snapshot"], target, env)


@pytest.fixture(scope="module")
def hook_runs(tmp_path_factory):
    """Both hooks on a repository with a staged buggy file, an excluded copy and a clean file.

    ``pre-commit run`` with the configuration snippet of docs/integrations.md (``repo`` + ``rev`` + both hooks)
    runs twice: the first run reports, fixes and fails, the second passes. ``try-repo`` runs the
    check hook once more; it always builds its environment in a throwaway store, so that is the
    second and last install.
    """
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    base = tmp_path_factory.mktemp("pre-commit")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PRE_COMMIT", "GIT_", "MLLINT_")) and k != "VIRTUAL_ENV"}
    env.update(PRE_COMMIT_HOME=str(base / "cache"), PIP_DISABLE_PIP_VERSION_CHECK="1", NO_COLOR="1")
    hooks_repo, work = base / "hooks", base / "work"
    _snapshot(hooks_repo, env)
    rev = _git(["rev-parse", "HEAD"], hooks_repo, env).strip()
    files = {
        "pyproject.toml": "[tool.mllint]\nunsafe-fixes = true\n",  # MLL101's fix is unsafe
        "train.py": MLL101_SRC,
        "build/train.py": MLL101_SRC,  # excluded by default: --force-exclude must skip it
        "clean.py": CLEAN_SRC,
        ".pre-commit-config.yaml": (f"repos:\n  - repo: {hooks_repo.as_posix()}\n    rev: {rev}\n"
                                    "    hooks:\n      - id: mllint\n      - id: mllint-fix\n"),
    }
    write(work, files)
    _git(["init", "-q"], work, env)
    _git(["add", "-A"], work, env)
    names = ["train.py", "build/train.py", "clean.py"]

    def pre_commit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pre_commit", *args, "--color", "never", "--verbose", "--files", *names],
            cwd=str(work), env=env, capture_output=True, text=True, timeout=600)

    runs = {}
    runs["first"] = pre_commit("run")
    runs["fixed"] = {name: (work / name).read_text(encoding="utf-8") for name in names}
    runs["second"] = pre_commit("run")
    write(work, {"train.py": MLL101_SRC})
    runs["try-repo"] = pre_commit("try-repo", str(hooks_repo), "mllint")
    return runs


def _output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _hook(output: str, name: str) -> str:
    """The part of pre-commit's output that belongs to the hook whose status line starts ``name``."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(name + ".")]
    assert starts, output
    end = next((i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith("mllint") and "...." in lines[i]),
               len(lines))
    return "\n".join(lines[starts[0]:end])


def _check_reports_the_bug_only(part: str, output: str) -> None:
    assert part.splitlines()[0].endswith("Failed"), output
    assert "train.py:3:1: MLL101 [*] pad token is the EOS token" in part, output
    assert "build/train.py" not in part.replace(os.sep, "/"), output  # --force-exclude


def test_first_run_reports_and_fixes(hook_runs):
    proc = hook_runs["first"]
    output = _output(proc)
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    _check_reports_the_bug_only(_hook(proc.stdout, "mllint"), output)
    fix = _hook(proc.stdout, "mllint (fix)")
    assert fix.splitlines()[0].endswith("Failed"), output
    assert "files were modified by this hook" in fix, output
    assert "1 fixed, 0 remaining" in fix, output
    fixed = hook_runs["fixed"]
    assert fixed["train.py"] == MLL101_FIXED
    assert fixed["build/train.py"] == MLL101_SRC  # excluded: left alone
    assert fixed["clean.py"] == CLEAN_SRC


def test_second_run_passes(hook_runs):
    proc = hook_runs["second"]
    assert proc.returncode == 0, _output(proc)
    assert _hook(proc.stdout, "mllint").splitlines()[0].endswith("Passed"), _output(proc)
    assert _hook(proc.stdout, "mllint (fix)").splitlines()[0].endswith("Passed"), _output(proc)


def test_try_repo(hook_runs):
    proc = hook_runs["try-repo"]
    assert proc.returncode == 1, _output(proc)
    _check_reports_the_bug_only(_hook(proc.stdout, "mllint"), _output(proc))
