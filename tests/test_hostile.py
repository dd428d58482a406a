"""Hostile and odd input: every case produces one clear line (the exact line users see), never a
traceback or a hang, and the other files are still checked.

Most cases live in one directory checked by one run of the real command (``python -m mllint``,
as ``clihelp.run`` does), so the whole list costs a few seconds. Expected CPython syntax errors
are computed with the running interpreter's own parser: they are the messages Python itself
gives, and they differ a little between Python versions.
"""

from __future__ import annotations

import ast
import contextlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pytest
from click.testing import CliRunner

from clihelp import MLL302_FIXED, MLL302_SRC, write
from mllint import Settings, lint_source
from mllint.cli import cli
from mllint.output import renderer
from mllint.output.text import RenderOptions
from mllint.runner import Mode, discover, process_file
from mllint.settings import ConfigResolver

# The one line MLL302_SRC gives (row 3, column 23), for any path.
MLL302_MESSAGE = next(d.message for d in lint_source(MLL302_SRC, "x.py", Settings()) if d.code == "MLL302")


def mll302(path: str, fixable: bool = False) -> str:
    return f"{path}:3:23: MLL302 {'[*] ' if fixable else ''}{MLL302_MESSAGE}"


def python_says(source: Union[str, bytes]) -> Tuple[int, int, str]:
    """(row, column, message) of CPython's own syntax error for ``source``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(source, "<test>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        except SyntaxError as exc:
            return max(exc.lineno or 1, 1), max(exc.offset or 1, 1), exc.msg
    raise AssertionError(f"CPython accepts {source[:60]!r}")


def syntax_line(path: str, source: Union[str, bytes]) -> str:
    row, column, message = python_says(source)
    return f"{path}:{row}:{column}: MLL902 SyntaxError: {message}"


def run(args: Sequence[str], cwd: Path, prefix: Sequence[str] = (), timeout: float = 60,
        input: Optional[str] = None) -> subprocess.CompletedProcess:
    """``mllint ARGS`` in ``cwd`` (optionally under ``prefix``, such as a privilege drop). A hang
    fails the test after ``timeout`` seconds; a traceback fails it at once."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLLINT_DEBUG", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    proc = subprocess.run([*prefix, sys.executable, "-m", "mllint", *args], cwd=str(cwd), input=input,
                          capture_output=True, text=True, encoding="utf-8", errors="replace",
                          env=env, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


# -- the hostile tree: one run over every odd file -------------------------------------------------

def _big_generated_file() -> str:
    """~10 MB, as a generated data module looks: long literals, a docstring, many comments. No
    rule's trigger words, so the prefilter leaves only CPython's syntax check."""
    rng = random.Random(0)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmopqrstuvwxyz0123456789+/"  # no `n`: no `nn.`
    blob = "".join(rng.choice(alphabet) for _ in range(100_000))
    body = "".join(f'BLOB_{i} = "{blob}"\n' for i in range(105))
    return '"""Generated lookup tables."""\n' + body + "".join(f"# row {i}\n" for i in range(1000))


PY2 = "x = 1\nprint 'hello'\n"
TABS = "def f():\n\tx = 1\n        return x\n"
UNTERMINATED = 'x = "abc\ny = 2\n'
UNTERMINATED_TRIPLE = 'x = 1\ny = """abc\n'
DEEP_PARENS = "x = " + "(" * 3000 + "1" + ")" * 3000 + "\n"  # libcst's parser overflows its stack here
DEEP_CHAIN = "x = " + " + ".join(f"a{i}" for i in range(6000)) + "\n"  # libcst takes minutes here
DEEP_VALID = MLL302_SRC + "help = (\n" + "".join(f'    "line {i} "\n' for i in range(700)) + ")\n"
LONG_LINE = MLL302_SRC + 'x = "' + "a" * 1_000_000 + '"\n'
NOTEBOOKS: Dict[str, bytes] = {
    "not_json.ipynb": b"not json\n",
    "empty.ipynb": b"",
    "nbformat3.ipynb": b'{"nbformat": 3, "worksheets": []}\n',
    "array.ipynb": b"[1, 2]\n",
    "conflict.ipynb": b'{\n<<<<<<< HEAD\n "cells": [],\n=======\n "cells": [{}],\n>>>>>>> x\n "nbformat": 4\n}\n',
    "bad_source.ipynb": b'{"nbformat": 4, "cells": [{"cell_type": "code", "source": 42}]}\n',
    "latin1.ipynb": b'{"nbformat": 4, "cells": [], "metadata": {"title": "caf\xe9"}}\n',
    "deep.ipynb": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    write(root, {
        "good.py": MLL302_SRC,
        "py2.py": PY2,
        "tabs.py": TABS,
        "unterminated.py": UNTERMINATED,
        "unterminated_triple.py": UNTERMINATED_TRIPLE,
        "only_bom.py": b"\xef\xbb\xbf",
        "empty.py": b"",
        "blank.py": b"\n\n   \n\t\n",
        "null_byte.py": b"x = 1\x00\n",
        "undecodable.py": b'x = "\xff"\n',
        "latin1_no_cookie.py": b'x = 1\ny = "caf\xe9"\n',
        "wrong_cookie.py": b'# -*- coding: ascii -*-\nx = "\xc3\xa9"\n',
        "unknown_cookie.py": b"# -*- coding: klingon -*-\nx = 1\n",
        "bom_and_cookie.py": b"\xef\xbb\xbf# -*- coding: latin-1 -*-\nx = 1\n",
        "deep_parens.py": DEEP_PARENS,
        **({"deep_chain.py": DEEP_CHAIN} if CHAIN_REFUSED else {}),
        "deep_valid.py": DEEP_VALID,
        "long_line.py": LONG_LINE,
        "big.py": _big_generated_file(),
        "x.py/inner.py": MLL302_SRC,  # a directory named like a file
        "with space/a b.py": MLL302_SRC,
        "ünï cödé/名前.py": MLL302_SRC,
        "loops/a.py": MLL302_SRC,
        **{f"nb/{name}": raw for name, raw in NOTEBOOKS.items()},
    })
    os.symlink("nowhere.py", root / "broken_link.py")
    os.symlink("loop_b.py", root / "loop_a.py")
    os.symlink("loop_a.py", root / "loop_b.py")
    os.symlink("..", root / "loops" / "up")  # a directory symlink loop: walked once
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.py")
        os.mkfifo(root / "nb" / "fifo.ipynb")
    return root


def _cpython_refuses(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(source, "<test>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        except (SyntaxError, RecursionError, MemoryError):
            return True
    return False


# Python 3.11 and 3.12 refuse 6,000 chained operators; 3.9, 3.10 and 3.13 accept them, and libcst
# then needs minutes for the file (a known limit, docs/guarantees.md): only tested where refused.
CHAIN_REFUSED = _cpython_refuses(DEEP_CHAIN)


def expected_hostile_lines() -> List[str]:
    fifo = hasattr(os, "mkfifo")
    lines = [
        mll302("good.py"),
        syntax_line("py2.py", PY2),
        syntax_line("tabs.py", TABS),
        syntax_line("unterminated.py", UNTERMINATED),
        syntax_line("unterminated_triple.py", UNTERMINATED_TRIPLE),
        "null_byte.py:1:6: MLL902 SyntaxError: source contains a null byte",
        "undecodable.py:1:1: MLL903 cannot decode the file as utf-8 at line 1, byte 5: invalid start byte",
        "latin1_no_cookie.py:1:1: MLL903 cannot decode the file as utf-8 at line 2, byte 14: invalid continuation byte",
        "wrong_cookie.py:1:1: MLL903 cannot decode the file as ascii at line 2, byte 29: ordinal not in range(128)",
        "unknown_cookie.py:1:1: MLL903 cannot decode the file: unknown encoding: klingon",
        "bom_and_cookie.py:1:1: MLL903 cannot decode the file: it starts with a UTF-8 byte order mark but its "
        "coding cookie names another encoding",
        syntax_line("deep_parens.py", DEEP_PARENS),
        *(["deep_chain.py:1:1: MLL902 the file is too deeply nested to parse"] if CHAIN_REFUSED else []),
        "deep_valid.py:1:1: MLL902 the file is too deeply nested to check",
        mll302("long_line.py"),
        "broken_link.py:1:1: MLL904 cannot read the file: No such file or directory",
        "loop_a.py:1:1: MLL904 cannot read the file: Too many levels of symbolic links",
        "loop_b.py:1:1: MLL904 cannot read the file: Too many levels of symbolic links",
        *(["fifo.py:1:1: MLL904 cannot read the file: not a regular file (a named pipe)"] if fifo else []),
        mll302("x.py/inner.py"),
        mll302("with space/a b.py"),
        mll302("ünï cödé/名前.py"),
        mll302("loops/a.py"),
        "nb/not_json.ipynb:1:1: MLL905 not a valid Jupyter notebook: invalid JSON at line 1, column 1: Expecting value",
        "nb/empty.ipynb:1:1: MLL905 not a valid Jupyter notebook: invalid JSON at line 1, column 1: Expecting value",
        "nb/nbformat3.ipynb:1:1: MLL905 not a Jupyter notebook in nbformat 4 (nbformat 3); only nbformat 4 is supported",
        "nb/array.ipynb:1:1: MLL905 not a valid Jupyter notebook: the JSON is not an object",
        "nb/conflict.ipynb:1:1: MLL905 not a valid Jupyter notebook: invalid JSON at line 2, column 1: "
        "Expecting property name enclosed in double quotes",
        "nb/bad_source.ipynb:1:1: MLL905 not a valid Jupyter notebook: the source of cell 1 is neither a string "
        "nor a list of strings",
        f"nb/latin1.ipynb:1:1: MLL903 cannot decode the notebook as utf-8 at line 1, byte "
        f"{NOTEBOOKS['latin1.ipynb'].index(bytes([0xE9]))}: invalid continuation byte",
        "nb/deep.ipynb:1:1: MLL905 not a valid Jupyter notebook: the JSON is nested too deeply",
        *(["nb/fifo.ipynb:1:1: MLL904 cannot read the file: not a regular file (a named pipe)"] if fifo else []),
    ]
    return lines


def _sorted_lines(text: str) -> List[str]:
    return sorted(text.splitlines())


def test_every_hostile_file_gets_one_clear_line_and_the_others_are_checked(hostile):
    proc = run(["-q", "--output-format", "concise", "."], hostile)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""
    assert _sorted_lines(proc.stdout) == sorted(expected_hostile_lines())


def test_fixing_the_hostile_tree_touches_only_what_it_fixes(hostile, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(hostile, copy, symlinks=True, ignore=lambda d, names: [
        n for n in names if stat.S_ISFIFO(os.lstat(os.path.join(d, n)).st_mode)])
    if hasattr(os, "mkfifo"):
        os.mkfifo(copy / "fifo.py")
        os.mkfifo(copy / "nb" / "fifo.ipynb")
    before = {p: p.read_bytes() for p in _regular_files(copy)}
    proc = run(["-q", "--fix", "--unsafe-fixes", "."], copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fixed = {"good.py", "long_line.py", "x.py/inner.py", "with space/a b.py", "ünï cödé/名前.py", "loops/a.py"}
    for path, raw in before.items():
        rel = path.relative_to(copy).as_posix()
        if rel in fixed:
            assert path.read_bytes() == raw.replace(MLL302_SRC.encode(), MLL302_FIXED.encode(), 1), rel
        else:
            assert path.read_bytes() == raw, f"{rel} changed"
    lines = _sorted_lines(proc.stdout)
    assert not any(" MLL302 " in line for line in lines)
    assert len(lines) == len(expected_hostile_lines()) - len(fixed)
    assert not [p for p in _regular_files(copy) if p.name.startswith(".mllint-")]  # no temporary files


def _regular_files(root: Path) -> List[Path]:
    out = []
    for directory, _, names in os.walk(root):  # symlinks to directories are not followed
        for name in names:
            path = Path(directory, name)
            if not path.is_symlink() and stat.S_ISREG(path.stat().st_mode):
                out.append(path)
    return out


# -- one file at a time: named explicitly -----------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_named_pipe_named_explicitly_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.py")
    write(tmp_path, {"good.py": MLL302_SRC})
    proc = run(["pipe.py", "good.py"], tmp_path, timeout=30)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "pipe.py:1:1: MLL904 cannot read the file: not a regular file (a named pipe)", mll302("good.py")]


def test_a_broken_symlink_named_explicitly(tmp_path):
    os.symlink("gone.py", tmp_path / "link.py")
    proc = run(["-q", "link.py"], tmp_path)
    assert (proc.returncode, proc.stdout) == (1, "link.py:1:1: MLL904 cannot read the file: No such file or directory\n")


def test_an_empty_file_and_a_bom_only_file_pass(tmp_path):
    write(tmp_path, {"empty.py": b"", "bom.py": b"\xef\xbb\xbf"})
    proc = run(["empty.py", "bom.py"], tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "All checks passed!\n")


# -- permissions -------------------------------------------------------------------------------------

def _denying_prefix(tmp_path: Path) -> Optional[List[str]]:
    """A command prefix under which file permissions are enforced: none when they already are;
    as root, ``setpriv`` dropping the capabilities that bypass them; None when neither works."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        probe.read_text()
    except PermissionError:
        return []
    finally:
        probe.chmod(0o600)
        probe.unlink()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    check = tmp_path / "check"
    check.write_text("x")
    check.chmod(0)
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", f"open({str(check)!r}).read()"],
                              capture_output=True, text=True)
    except OSError:
        return None
    finally:
        check.chmod(0o600)
    return prefix if "PermissionError" in proc.stderr else None


@pytest.fixture
def denying(tmp_path):
    prefix = _denying_prefix(tmp_path)
    if prefix is None:
        pytest.skip("running as root and cannot drop the capabilities that bypass file permissions")
    return prefix


def test_unreadable_files_and_directories_are_reported(tmp_path, denying):
    write(tmp_path, {"secret.py": "x = 1\n", "locked/inner.py": MLL302_SRC, "good.py": MLL302_SRC,
                     "secret.ipynb": "{}"})
    for name in ("secret.py", "secret.ipynb", "locked"):
        (tmp_path / name).chmod(0)
    try:
        proc = run(["-q", "."], tmp_path, prefix=denying)
    finally:
        for name in ("secret.py", "secret.ipynb", "locked"):
            (tmp_path / name).chmod(0o700)
    assert proc.returncode == 1, proc.stderr
    assert _sorted_lines(proc.stdout) == sorted([
        mll302("good.py"),
        "locked:1:1: MLL904 cannot read the directory: Permission denied",
        "secret.ipynb:1:1: MLL904 cannot read the file: Permission denied",
        "secret.py:1:1: MLL904 cannot read the file: Permission denied",
    ])


def test_read_only_files_and_directories_are_reported_and_left_alone(tmp_path, denying):
    write(tmp_path, {"ro.py": MLL302_SRC, "rodir/f.py": MLL302_SRC, "rw.py": MLL302_SRC})
    (tmp_path / "ro.py").chmod(0o444)
    (tmp_path / "rodir").chmod(0o555)
    try:
        proc = run(["-q", "--fix", "--unsafe-fixes", "."], tmp_path, prefix=denying)
    finally:
        (tmp_path / "rodir").chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        "ro.py:1:1: MLL904 cannot write the fix: the file is read-only",
        mll302("ro.py", fixable=True),  # the file is as it was, and so are its findings
        "rodir/f.py:1:1: MLL904 cannot write the fix: the file's directory is read-only",
        mll302("rodir/f.py", fixable=True),
    ]
    assert (tmp_path / "ro.py").read_text() == MLL302_SRC
    assert (tmp_path / "rodir" / "f.py").read_text() == MLL302_SRC
    assert (tmp_path / "rw.py").read_text() == MLL302_FIXED
    assert stat.S_IMODE(os.stat(tmp_path / "ro.py").st_mode) == 0o444


# -- files that change or vanish during the run (in-process, race-free) ----------------------------

@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging the test run) when the body blocks for ``seconds``."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _concise(result) -> List[str]:
    return renderer("concise")([result], RenderOptions(unsafe_fixes=True)).splitlines()


def test_a_file_deleted_after_discovery_is_reported(tmp_path):
    write(tmp_path, {"a.py": MLL302_SRC})
    resolver = ConfigResolver({}, isolated=True)
    [path] = discover([str(tmp_path)], resolver)
    path.unlink()
    result = process_file(path, resolver.for_path(path), Mode())
    assert [d.code for d in result.diagnostics] == ["MLL904"]
    assert result.diagnostics[0].message == "cannot read the file: No such file or directory"


@pytest.mark.parametrize("what", ["deleted", "changed", "replaced by a pipe"])
def test_a_file_that_changes_between_read_and_write_is_reported_and_skipped(tmp_path, monkeypatch, what):
    import mllint.runner as runner

    if what == "replaced by a pipe" and not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes")
    path = tmp_path / "a.py"
    path.write_text(MLL302_SRC)
    real_fix_source = runner.fix_source

    def fix_then_interfere(*args, **kwargs):
        result = real_fix_source(*args, **kwargs)
        path.unlink()
        if what == "changed":
            path.write_text("# edited by someone else\n" + MLL302_SRC)
        elif what == "replaced by a pipe":
            os.mkfifo(path)
        return result

    monkeypatch.setattr(runner, "fix_source", fix_then_interfere)
    monkeypatch.chdir(tmp_path)
    with _deadline(30):  # opening a pipe for reading would wait for a writer forever
        result = process_file(Path("a.py"), Settings(), Mode(fix=True, unsafe=True))
    message = {
        "deleted": "the file was deleted while mllint was running; fixes not written",
        "changed": "the file changed while mllint was running; fixes not written",
        "replaced by a pipe": "cannot write the fix: not a regular file (a named pipe)",
    }[what]
    assert _concise(result) == [f"a.py:1:1: MLL904 {message}", mll302("a.py", fixable=True)]
    assert result.fixed == 0 and result.source == MLL302_SRC
    if what == "deleted":
        assert not path.exists()  # never re-created
    elif what == "changed":
        assert path.read_text() == "# edited by someone else\n" + MLL302_SRC
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if what == "deleted" else ["a.py"])


# -- configuration mistakes: one line each, exit 2 ---------------------------------------------------

CONFIG_MISTAKES = [
    ("select = [", "invalid TOML in {cfg}: Invalid value (at end of document)"),
    ("colour = 1", "unknown key `colour` in {cfg}"),
    ("unsafe_fixes = true", "unknown key `unsafe_fixes` in {cfg} (did you mean `unsafe-fixes`?)"),
    ('select = "MLL1"', "`select` of {cfg} must be a list of strings"),
    ("select = [1]", "`select` of {cfg} must be a list of strings"),
    ('select = ["XYZ"]', "unknown rule selector `XYZ` in `select` of {cfg}"),
    ('ignore = ["MLL777"]', "unknown rule selector `MLL777` in `ignore` of {cfg}"),
    ('respect-gitignore = "yes"', "`respect-gitignore` of {cfg} must be true or false"),
    ("per-file-ignores = []", "`per-file-ignores` of {cfg} must be a table of glob = [codes]"),
    ('per-file-ignores = {"x" = "MLL1"}', '`per-file-ignores."x"` of {cfg} must be a list of codes'),
    ('per-file-ignores = {"x" = ["NOPE"]}', "unknown rule selector `NOPE` in `per-file-ignores` of {cfg}"),
    ('target-versions = {trl = "banana"}', "invalid version `banana` in `target-versions.trl` of {cfg}"),
    ("target-versions = []", '`target-versions` of {cfg} must be a table of package = "version"'),
    ("rules = 3", "`rules` of {cfg} must be a table of rule tables"),
    ("rules.MLL777 = {}", "unknown rule `MLL777` in `rules` of {cfg}"),
    ("rules.MLL101 = 1", "`rules.MLL101` of {cfg} must be a table"),
    ("rules.MLL101.nope = 1", "unknown option `nope` for MLL101 in {cfg} (options: pad-token, value-masking-collators)"),
    ('rules.MLL101.value-masking-collators = "x"', "`rules.MLL101.value-masking-collators` of {cfg} must be a list of strings"),
    ("select = []\nselect = []", "invalid TOML in {cfg}: Cannot overwrite a value (at line 2, column 12)"),
]


@pytest.mark.parametrize("text, message", CONFIG_MISTAKES, ids=[m[0] for m in CONFIG_MISTAKES])
def test_config_mistakes_stop_the_run_with_one_line(tmp_path, monkeypatch, text, message):
    write(tmp_path, {"mllint.toml": text + "\n", "a.py": MLL302_SRC})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["a.py"])
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    cfg = str((tmp_path / "mllint.toml").resolve())
    assert result.output == f"mllint: error: {message.format(cfg=cfg)}\n"


def test_config_files_that_are_not_config_end_to_end(tmp_path):
    write(tmp_path, {"a/pyproject.toml": "[tool]\nmllint = 3\n", "a/x.py": MLL302_SRC,
                     "b/mllint.toml": b"\xff\xfe = 1\n", "b/x.py": MLL302_SRC})
    proc = run(["a"], tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"mllint: error: `tool.mllint` of {(tmp_path / 'a' / 'pyproject.toml').resolve()} must be a table\n"
    proc = run(["b"], tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith(f"mllint: error: cannot read {(tmp_path / 'b' / 'mllint.toml').resolve()}: ")
    assert len(proc.stderr.splitlines()) == 1


# -- a crash inside one rule is contained ------------------------------------------------------------

CRASH_PACK = '''
"""Rules with bugs, registered next to the real ones (as a third-party pack would be)."""
from mllint.core import registry as _registry
from mllint.core.diagnostic import Applicability
from mllint.core.rule import Rule


class CrashInCheck(Rule):
    """Crashes on files that contain `crash_here`."""
    code = "MLL897"
    name = "crash-in-check"
    summary = "test rule"
    triggers = (("crash_here",),)

    def check(self, ctx):
        return [1 / 0]


class CrashInPrefilter(Rule):
    """Its prefilter crashes on files that contain `prefilter_crash`."""
    code = "MLL898"
    name = "crash-in-prefilter"
    summary = "test rule"

    def applies_to(self, source):
        if "prefilter_crash" in source:
            raise KeyError("no such trigger")
        return False


class BrokenFix(Rule):
    """Offers a fix that does not parse for `break_me = 1`."""
    code = "MLL896"
    name = "broken-fix"
    summary = "test rule"
    triggers = (("break_me",),)

    def check(self, ctx):
        import libcst as cst
        for node in ctx.nodes(cst.Name):
            if node.value == "break_me":
                yield ctx.report(node, "break me", fix=ctx.fix("break", Applicability.SAFE, ctx.replace(node, "(")))


real = _registry.load_registry()
_registry._DEFAULT = _registry.Registry([*real.rules.values(), CrashInCheck, CrashInPrefilter, BrokenFix])

from mllint.cli import main
main()
'''


def test_a_crash_inside_one_rule_is_contained(tmp_path):
    write(tmp_path, {
        "crashpack.py": CRASH_PACK,
        "src/a_crash.py": MLL302_SRC + "crash_here = 1\n",
        "src/b_prefilter.py": MLL302_SRC + "prefilter_crash = 1\n",
        "src/c_good.py": MLL302_SRC,
        "src/d_broken_fix.py": MLL302_SRC + "break_me = 1\n",
    })
    pack = CRASH_PACK.splitlines()
    crash_row = pack.index("        return [1 / 0]") + 1
    prefilter_row = pack.index('            raise KeyError("no such trigger")') + 1
    env = {k: v for k, v in os.environ.items() if k not in ("MLLINT_DEBUG", "FORCE_COLOR")}

    def mllint(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "crashpack.py", *args], cwd=tmp_path, capture_output=True,
                              text=True, encoding="utf-8", env=env, timeout=60)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return proc

    proc = mllint("-q", "src")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    hint = "; please report this bug"
    assert proc.stdout.splitlines() == [
        "src/a_crash.py:1:1: MLL999 internal error in MLL897 (crash-in-check) on src/a_crash.py: "
        f"ZeroDivisionError: division by zero at crashpack.py:{crash_row}{hint}",
        mll302("src/a_crash.py"),  # the other rules still ran on the file
        "src/b_prefilter.py:1:1: MLL999 internal error in MLL898 (crash-in-prefilter) on src/b_prefilter.py: "
        f"KeyError: 'no such trigger' at crashpack.py:{prefilter_row}{hint}",
        mll302("src/b_prefilter.py"),
        mll302("src/c_good.py"),  # and on the other files
        mll302("src/d_broken_fix.py"),
        "src/d_broken_fix.py:4:1: MLL896 [*] break me",
    ]

    # --fix: the fix that breaks the code is not applied and is reported, naming only its rule and
    # the file; the other fixes are applied (on that file too), the run finishes, and exits 2.
    proc = mllint("-q", "--fix", "--unsafe-fixes", "src")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    broken = [line for line in lines if line.startswith("src/d_broken_fix.py:1:1: MLL999")]
    assert broken == [
        "src/d_broken_fix.py:1:1: MLL999 internal error: the fix for MLL896 produced invalid code on "
        f"src/d_broken_fix.py (SyntaxError: {python_says(MLL302_SRC + '( = 1' + chr(10))[2]}); the fix was "
        "not applied, please report this bug"], lines
    assert "src/d_broken_fix.py:4:1: MLL896 [*] break me" in lines
    assert (tmp_path / "src" / "d_broken_fix.py").read_text() == MLL302_FIXED + "break_me = 1\n"
    assert (tmp_path / "src" / "c_good.py").read_text() == MLL302_FIXED
    assert (tmp_path / "src" / "a_crash.py").read_text() == MLL302_FIXED + "crash_here = 1\n"
    assert proc.stderr == ""


# -- file names that are not UTF-8 -------------------------------------------------------------------

FORMATS = ["concise", "full", "grouped", "pylint", "json", "json-lines", "github", "gitlab", "sarif", "junit"]


@pytest.fixture
def latin1_name(tmp_path) -> Path:
    """A directory with one file whose name is the Latin-1 byte string ``caf\\xe9.py``."""
    try:
        fd = os.open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.py"), os.O_WRONLY | os.O_CREAT, 0o644)
    except (OSError, ValueError):
        pytest.skip("the file system refuses file names that are not UTF-8")
    with os.fdopen(fd, "w") as handle:
        handle.write(MLL302_SRC)
    return tmp_path


def test_a_file_name_that_is_not_utf8_is_reported_in_every_format(latin1_name, monkeypatch):
    from mllint.cli import _emit

    monkeypatch.chdir(latin1_name)
    [path] = discover(["."], ConfigResolver({}, isolated=True))
    result = process_file(path, Settings(), Mode())
    for fmt in FORMATS:
        out = latin1_name / f"report.{fmt}"
        _emit(renderer(fmt)([result], RenderOptions()), str(out), to_stderr=False)
        # SARIF URIs carry the raw byte, %-encoded; XML cannot hold it; the others escape it.
        expected = {"sarif": "caf%E9.py", "junit": "caf\ufffd.py"}.get(fmt, "caf\\udce9.py")
        assert expected in out.read_text(encoding="utf-8"), fmt


def test_a_file_name_that_is_not_utf8_end_to_end(latin1_name):
    printed = run(["-q", "--output-format", "sarif", "."], latin1_name)
    assert (printed.returncode, printed.stderr) == (1, "")
    assert '"uri": "caf%E9.py"' in printed.stdout
    written = run(["-q", "-o", "report.txt", "."], latin1_name)
    assert (written.returncode, written.stdout, written.stderr) == (1, "", "")
    assert (latin1_name / "report.txt").read_text(encoding="utf-8") == mll302("caf\\udce9.py") + "\n"
