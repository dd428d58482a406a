"""Run mllint over large real corpora and check the guarantees of docs/guarantees.md on them.

    python bench/check_corpus.py                       # the benchmark's wheel corpus + the fetched examples
    python bench/check_corpus.py DIR [DIR ...]         # these directories (plus the defaults unless --only)
    python bench/check_corpus.py --only DIR            # just DIR

Each corpus's ``.py`` and ``.ipynb`` files are copied into a temporary directory, and the real
command (``python -m mllint``, every rule, preview rules too, no config, no cache) runs on the copy:

1. a check: counts of files, findings per code, and internal errors (MLL999);
2. ``--fix --unsafe-fixes``: every file it changed must still parse (CPython and libcst), when it
   parsed before, and must not use a name it does not bind that it did not use before; no
   temporary file may be left behind;
3. ``--fix --unsafe-fixes --diff`` again: it must find nothing more to fix.

The default corpora are the benchmark's PyPI-wheel corpus (``build_corpus`` of ``bench/run.py``,
cached in ``~/.cache/mllint-bench``; built with ``pip download`` the first time) and the public
example repositories fetched to ``/tmp/realcode`` (PEFT, pytorch/examples), where present.

Exit status 0 when every check passes, 1 otherwise. CI does not run this (it takes minutes); the
counts of the last run are in docs/guarantees.md.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = (Path("/tmp/realcode/huggingface+peft"), Path("/tmp/realcode/pytorch+examples"))
SUFFIXES = (".py", ".ipynb")
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".mllint_cache"}
BASE = ["--isolated", "--no-cache", "--preview", "--select", "ALL", "--output-format", "json"]


@dataclass
class Report:
    name: str
    files: int = 0
    seconds: float = 0.0
    findings: Counter = field(default_factory=Counter)
    fixes: int = 0
    changed: int = 0
    problems: List[str] = field(default_factory=list)

    @property
    def internal_errors(self) -> int:
        return self.findings["MLL999"]


# -- corpora -----------------------------------------------------------------------------------------

def wheel_corpus(cache: Path) -> Optional[Path]:
    """The benchmark's corpus, through its own builder (bench/corpus.py or bench/run.py)."""
    for name in ("corpus", "run"):
        script = HERE / f"{name}.py"
        if not script.exists():
            continue
        spec = importlib.util.spec_from_file_location(f"_mllint_bench_{name}", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        build = getattr(module, "build_corpus", None)
        if build is not None:
            return Path(build(cache))
    return None


def copy_sources(source: Path, target: Path) -> int:
    """Copy every ``.py``/``.ipynb`` regular file below ``source`` to ``target``; their number."""
    count = 0
    for directory, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in filenames:
            path = Path(directory, name)
            if name.endswith(SUFFIXES) and path.is_file() and not path.is_symlink():
                destination = target / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)
                count += 1
    return count


def snapshot(root: Path) -> Dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and ".mllint_cache" not in p.parts}


# -- the checks on a fixed file --------------------------------------------------------------------------

_MODULE_NAMES = {"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__",
                 "__builtins__", "__path__", "__annotations__", "__dict__", "__class__"}


def unbound_names(tree: ast.AST) -> Optional[Set[str]]:
    """Names loaded somewhere and bound nowhere in the module (not builtins); None with a star
    import. tests/test_fix_safety.py uses it too, so CI and the corpus check judge alike."""
    loaded: Set[str] = set()
    bound: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            if node.name == "*":
                return None
            bound.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif type(node).__name__ in ("MatchAs", "MatchStar") and getattr(node, "name", None):
            bound.add(node.name)
        elif type(node).__name__ == "MatchMapping" and getattr(node, "rest", None):
            bound.add(node.rest)
    return loaded - bound - set(dir(builtins)) - _MODULE_NAMES


def _python_tree(raw: bytes, name: str) -> Optional[ast.AST]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(raw, name)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None


def check_fixed_file(path: Path, before: bytes, after: bytes) -> List[str]:
    """What is wrong with a file ``--fix`` changed from ``before`` to ``after``."""
    if path.suffix == ".ipynb":
        try:
            json.loads(after)
        except ValueError as exc:
            return [f"{path}: the fixed notebook is not JSON: {exc}"]
        return []
    old = _python_tree(before, str(path))
    if old is None:
        return [f"{path}: did not parse, yet was changed"]
    new = _python_tree(after, str(path))
    if new is None:
        return [f"{path}: the fixed file does not parse (CPython)"]
    problems = []
    try:
        import libcst

        libcst.parse_module(after)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        problems.append(f"{path}: the fixed file does not parse (libcst): {str(exc).splitlines()[0]}")
    old_unbound, new_unbound = unbound_names(old), unbound_names(new)
    if old_unbound is not None and new_unbound is not None and new_unbound - old_unbound:
        problems.append(f"{path}: the fix uses names it does not bind: {sorted(new_unbound - old_unbound)}")
    return problems


# -- running mllint ---------------------------------------------------------------------------------

def mllint(args: Sequence[str], cwd: Path, jobs: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLLINT_DEBUG", "FORCE_COLOR")}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "mllint", *BASE, "-j", str(jobs), *args], cwd=str(cwd),
                          capture_output=True, text=True, encoding="utf-8", errors="replace", env=env)


def _diagnostics(proc: subprocess.CompletedProcess, what: str, report: Report) -> List[dict]:
    if "Traceback" in proc.stdout + proc.stderr:
        report.problems.append(f"{what}: a traceback:\n{proc.stderr[-3000:]}")
    if proc.returncode not in (0, 1, 2) or proc.stderr.startswith("mllint: "):
        report.problems.append(f"{what}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return []
    try:
        return json.loads(proc.stdout or "[]")
    except ValueError:
        report.problems.append(f"{what}: the output is not JSON: {proc.stdout[:500]}")
        return []


def check_corpus(name: str, source: Path, jobs: int, keep: bool) -> Report:
    report = Report(name)
    work = Path(tempfile.mkdtemp(prefix="mllint-corpus-"))
    try:
        copy = work / "src"
        report.files = copy_sources(source, copy)
        started = time.perf_counter()

        checked = _diagnostics(mllint(["-q", "--exit-zero", "."], copy, jobs), "check", report)
        report.findings.update(d["code"] for d in checked)
        for diag in checked:
            if diag["code"] == "MLL999":
                report.problems.append(f"MLL999 {diag['filename']}: {diag['message']}")

        before = snapshot(copy)
        fixing = mllint(["--fix", "--unsafe-fixes", "--exit-zero", "."], copy, jobs)
        remaining = _diagnostics(fixing, "fix", report)
        match = re.search(r"\((\d+) fixed", fixing.stderr)
        report.fixes = int(match.group(1)) if match else 0
        for diag in remaining:
            if diag["code"] == "MLL999":
                report.problems.append(f"MLL999 after --fix {diag['filename']}: {diag['message']}")
        after = snapshot(copy)
        leftovers = sorted(p for p in after if p.name.startswith(".mllint-"))
        report.problems += [f"temporary file left behind: {p}" for p in leftovers]
        for path, old in before.items():
            new = after.get(path)
            if new is None:
                report.problems.append(f"{path}: deleted by --fix")
            elif new != old:
                report.changed += 1
                report.problems += check_fixed_file(path, old, new)

        again = mllint(["--fix", "--unsafe-fixes", "--diff", "."], copy, jobs)
        _diagnostics(again, "second fix", report) if again.stdout.startswith("[") else None
        if again.returncode != 0 or again.stdout.strip():
            report.problems.append(f"a second --fix would change more (exit {again.returncode}):\n"
                                   f"{again.stdout[:3000]}")
        report.seconds = time.perf_counter() - started
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def table(reports: Sequence[Report]) -> str:
    codes = sorted({c for r in reports for c in r.findings})
    head = ["corpus", "files", "findings", *codes, "fixes", "files fixed", "problems", "seconds"]
    rows = [[r.name, str(r.files), str(sum(r.findings.values())), *(str(r.findings[c]) for c in codes),
             str(r.fixes), str(r.changed), str(len(r.problems)), f"{r.seconds:.0f}"] for r in reports]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="*", type=Path, help="more directories to check")
    parser.add_argument("--only", action="store_true", help="check only the directories given")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mllint-bench",
                        help="the benchmark's cache (where the wheel corpus lives)")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the fixed copies (their path is printed)")
    args = parser.parse_args(argv)

    corpora: List[tuple] = []
    if not args.only:
        try:
            wheels = wheel_corpus(args.cache.expanduser())
        except Exception as exc:  # noqa: BLE001 - no network, no pip: say so, go on
            print(f"check_corpus: the wheel corpus is not available ({exc}); skipped", file=sys.stderr)
            wheels = None
        if wheels is not None:
            corpora += [(f"wheels/{d.name}", d) for d in sorted(wheels.iterdir()) if d.is_dir()]
        corpora += [(d.name, d) for d in EXAMPLES if d.is_dir()]
    corpora += [(d.name or str(d), d) for d in args.dirs]
    if not corpora:
        parser.error("no corpus: give directories, or build the benchmark corpus first")

    reports = []
    for name, path in corpora:
        print(f"check_corpus: {name} ({path})", file=sys.stderr)
        report = check_corpus(name, path, args.jobs, args.keep)
        reports.append(report)
        for problem in report.problems:
            print(f"  PROBLEM: {problem}", file=sys.stderr)
    print(table(reports))
    total = Report("total", sum(r.files for r in reports), sum(r.seconds for r in reports),
                   sum((r.findings for r in reports), Counter()), sum(r.fixes for r in reports),
                   sum(r.changed for r in reports), [p for r in reports for p in r.problems])
    print(f"\n{total.files} files, {sum(total.findings.values())} findings, {total.internal_errors} internal "
          f"errors (MLL999), {total.fixes} fixes in {total.changed} files, {len(total.problems)} problems")
    return 1 if total.problems else 0


if __name__ == "__main__":
    sys.exit(main())
