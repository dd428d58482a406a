"""End to end: which files a run checks (excludes, .gitignore, virtualenvs, explicit paths)."""

from __future__ import annotations

import pytest

from clihelp import MLL302_SRC, codes_by_path, run, write

DEFAULT_EXCLUDED = (
    ".git", ".hg", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".mllint_cache", ".tox", ".nox",
    ".venv", "venv", "__pycache__", "__pypackages__", "_build", "build", "dist", "node_modules",
    "site-packages", ".ipynb_checkpoints", ".eggs", "buck-out",
)


def checked(proc) -> list:
    """The checked files that have a finding (every file here has exactly one)."""
    return [path for path, _ in codes_by_path(proc.stdout)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A repository whose every .py file has one MLL302 finding; read-only for the tests."""
    root = tmp_path_factory.mktemp("repo")
    files = {f"{name}/m.py": MLL302_SRC for name in DEFAULT_EXCLUDED if name != ".git"}
    files.update({
        ".git/hooks/m.py": MLL302_SRC,
        "main.py": MLL302_SRC,
        "notes.txt": MLL302_SRC, "stub.pyi": MLL302_SRC, "script": MLL302_SRC,
        "pkg/__init__.py": MLL302_SRC,
        "pkg/build_utils.py": MLL302_SRC,  # only the name `build` is excluded, not a prefix
        "pkg/mybuild/m.py": MLL302_SRC,
        "pkg/build/m.py": MLL302_SRC,  # a nested `build` directory is excluded, too
        "pkg/__pycache__/m.py": MLL302_SRC,
        "pkg/sub/keep.py": MLL302_SRC, "pkg/sub/gen_a.py": MLL302_SRC,
        "pkg/sub/.gitignore": "gen_*.py\n",
        "envs/py311/pyvenv.cfg": "home = /usr/bin\n",  # a virtualenv under any name
        "envs/py311/lib/m.py": MLL302_SRC,
        "envs/other/m.py": MLL302_SRC,
        "ignored/m.py": MLL302_SRC, "ignored/sub/m.py": MLL302_SRC,
        "data/tmp_1.py": MLL302_SRC, "data/keep_me.py": MLL302_SRC,
        "private.py": MLL302_SRC,
        ".gitignore": "ignored/\ndata/tmp_*.py\n",
        ".git/info/exclude": "private.py\n",
    })
    write(root, files)
    return root


def test_directory_walk_skips_default_excludes_gitignore_and_virtualenvs(tree):
    proc = run(["-q", "."], tree)
    assert proc.returncode == 1
    assert sorted(checked(proc)) == [
        "data/keep_me.py", "envs/other/m.py", "main.py", "pkg/__init__.py", "pkg/build_utils.py",
        "pkg/mybuild/m.py", "pkg/sub/keep.py",
    ]
    assert run(["-q"], tree).stdout == proc.stdout  # no path: the same, in the same order


def test_respect_gitignore_false(tree, tmp_path):
    config = tmp_path / "no-gitignore.toml"
    config.write_text("respect-gitignore = false\n")
    proc = run(["-q", "--config", config, "."], tree)
    assert sorted(checked(proc)) == [
        "data/keep_me.py", "data/tmp_1.py", "envs/other/m.py", "ignored/m.py", "ignored/sub/m.py", "main.py",
        "pkg/__init__.py", "pkg/build_utils.py", "pkg/mybuild/m.py", "pkg/sub/gen_a.py", "pkg/sub/keep.py",
        "private.py",
    ]


def test_exclude_replaces_and_extend_exclude_adds(tree):
    # Globs in a config file are relative to its directory: these live in the tree (under names
    # that are not discovered) and are removed again.
    replaced = tree / "replaced.toml"
    extended = tree / "extended.toml"
    try:
        replaced.write_text("exclude = [\"pkg/sub/\", \"*_me.py\"]\nrespect-gitignore = false\n")
        extended.write_text("extend-exclude = [\"mybuild\", \"*_utils.py\"]\n")
        proc = run(["-q", "--config", replaced, "pkg", "build", "dist", "data"], tree)
        extended_proc = run(["-q", "--config", extended, "pkg"], tree)
    finally:
        replaced.unlink()
        extended.unlink()
    # `build`, `dist` and `__pycache__` are no longer excluded; `pkg/sub/` (anchored) and `*_me.py` are.
    assert sorted(checked(proc)) == [
        "build/m.py", "data/tmp_1.py", "dist/m.py", "pkg/__init__.py", "pkg/__pycache__/m.py",
        "pkg/build/m.py", "pkg/build_utils.py", "pkg/mybuild/m.py",
    ]
    assert sorted(checked(extended_proc)) == ["pkg/__init__.py", "pkg/sub/keep.py"]


def test_explicit_files_are_checked_unless_force_exclude(tree):
    named = ["build/m.py", "ignored/m.py", "data/tmp_1.py", "private.py", "envs/py311/lib/m.py", "pkg/sub/gen_a.py"]
    proc = run(["-q", *named], tree)
    assert proc.returncode == 1
    assert checked(proc) == named
    forced = run(["-q", "--force-exclude", *named, "main.py"], tree)
    assert checked(forced) == ["main.py"]


def test_force_exclude_from_config(tree, tmp_path):
    config = tmp_path / "force.toml"
    config.write_text("force-exclude = true\n")
    proc = run(["-q", "--config", config, "build/m.py", "ignored/m.py", "main.py"], tree)
    assert checked(proc) == ["main.py"]


def test_explicit_excluded_directory_is_walked(tree):
    """A directory named on the command line is checked even when excluded, like a file (ruff
    does the same); what is excluded inside it stays excluded."""
    proc = run(["-q", "build", "ignored", "envs/py311", "pkg/sub"], tree)
    assert checked(proc) == ["build/m.py", "ignored/m.py", "ignored/sub/m.py", "envs/py311/lib/m.py",
                             "pkg/sub/keep.py"]
    forced = run(["-q", "--force-exclude", "build", "ignored", "envs/py311", "pkg/sub"], tree)
    assert checked(forced) == ["pkg/sub/keep.py"]
    # From inside an excluded directory, `.` is that directory.
    inside = run(["-q"], tree / "ignored")
    assert checked(inside) == ["m.py", "sub/m.py"]


def test_excludes_do_not_look_above_the_project(tmp_path):
    """A project that lives below a directory called `build` (or `dist`, `venv`...) is checked,
    also when it is named by an absolute path from somewhere else."""
    write(tmp_path, {"build/proj/.git/HEAD": "", "build/proj/train.py": MLL302_SRC,
                     "build/proj/build/m.py": MLL302_SRC, "elsewhere/.keep": ""})
    proc = run(["-q", tmp_path / "build" / "proj"], tmp_path / "elsewhere")
    assert checked(proc) == [str(tmp_path / "build" / "proj" / "train.py")]
    relative = run(["-q", "../build/proj"], tmp_path / "elsewhere")
    assert checked(relative) == ["../build/proj/train.py"]


def test_each_file_is_checked_once(tree):
    everything = sorted(checked(run(["-q", "."], tree)))
    proc = run(["-q", "main.py", "./main.py", "pkg", "pkg/__init__.py", "."], tree)
    paths = checked(proc)
    assert paths[0] == "main.py"  # in the order given
    assert sorted(paths) == everything


def test_no_python_files(tmp_path):
    write(tmp_path, {"README.md": "hi\n", "build/m.py": MLL302_SRC})
    proc = run(["."], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr == "All checks passed!\n"


def test_exclude_patterns_never_exclude_the_project_root(tmp_path):
    write(tmp_path, {".hidden/m.py": MLL302_SRC, "sub/m.py": MLL302_SRC,
                     "pyproject.toml": "[tool.mllint]\nexclude = [\".*\"]\n"})
    for args in (["-q", "."], ["-q", "--force-exclude", "."]):
        proc = run(args, tmp_path)
        assert checked(proc) == ["sub/m.py"], args
