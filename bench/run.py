"""Benchmark mllint on a corpus of real library code, next to its peers, in one run.

    python bench/run.py                      # build the corpus, measure, print the table
    python bench/run.py --write docs/performance.md --profile --compare-triage

The corpus is the ``.py`` files of pinned PyPI wheels (``pip download --no-deps``), unpacked into
a cache directory outside the repository (``--cache``, default ``~/.cache/mllint-bench``). ruff
and TorchFix are installed into a virtualenv of their own there; they are never dependencies of
mllint. Every measurement runs on the same files, one after the other, so their ratios are
comparable even on a noisy machine; ``--repeat N`` keeps the fastest of N runs of each.

Peak memory is the largest sum of the resident set sizes of the measured process and all its
children, sampled every 50 ms from /proc (Linux), else the largest child's ``ru_maxrss``.

This is a script, not a test: it takes minutes and needs the network once (for the wheels).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import venv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WHEELS = ("transformers==5.23.0", "trl==1.16.0", "peft==0.21.2", "accelerate==1.15.0", "lightning==2.6.6")
TOOLS = ("ruff==0.17.5", "torchfix==0.7.0")
BEGIN, END = "<!-- bench:begin (written by bench/run.py) -->", "<!-- bench:end -->"

# Each a Python program run as ``python -c PROGRAM ARGS``.
AST_FLOOR = """
import ast, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
for path in sorted(Path(sys.argv[1]).rglob("*.py")):
    ast.parse(path.read_bytes())
"""
LIBCST_PARSE = """
import sys
from multiprocessing import Pool
from pathlib import Path
import libcst

def parse(path):
    try:
        libcst.parse_module(Path(path).read_bytes())
    except Exception:
        pass

if __name__ == "__main__":
    files = sorted(str(p) for p in Path(sys.argv[1]).rglob("*.py"))
    jobs = int(sys.argv[2])
    if jobs == 1:
        for f in files:
            parse(f)
    else:
        with Pool(jobs) as pool:
            for _ in pool.imap_unordered(parse, files, chunksize=8):
                pass
"""
# mllint as a script (so cProfile can run it too).
MLLINT = """
import sys
from mllint.cli import main
sys.argv[0] = "mllint"
main()
"""


@dataclass
class Measure:
    name: str
    wall: float
    peak_mib: float
    files: int
    note: str = ""
    output: str = ""
    extra: Dict[str, float] = field(default_factory=dict)


# -- corpus and tools ----------------------------------------------------------------------------

def _wheel_prefix(spec: str) -> str:
    name, version = spec.split("==")
    return f"{name.replace('-', '_')}-{version}-"


def build_corpus(cache: Path) -> Path:
    wheels = cache / "wheels"
    corpus = cache / "corpus"
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [w for w in WHEELS if not list(wheels.glob(_wheel_prefix(w) + "*.whl"))]
    if missing:
        print(f"downloading {', '.join(missing)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "-q", "-d", str(wheels), *missing], check=True)
    marker = corpus / ".complete"
    if not marker.exists() or marker.read_text() != "\n".join(WHEELS):
        shutil.rmtree(corpus, ignore_errors=True)
        for spec in WHEELS:
            wheel = sorted(wheels.glob(_wheel_prefix(spec) + "*.whl"))[0]
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if member.endswith(".py"):
                        archive.extract(member, corpus / wheel.stem)
        marker.write_text("\n".join(WHEELS))
    return corpus


def tools_venv(cache: Path) -> Path:
    env = cache / "tools-venv"
    python = env / "bin" / "python"
    marker = env / ".tools"
    if not marker.exists() or marker.read_text() != "\n".join(TOOLS):
        print(f"installing {', '.join(TOOLS)} into {env}", file=sys.stderr)
        venv.create(env, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TOOLS], check=True)
        marker.write_text("\n".join(TOOLS))
    return env / "bin"


# -- measuring -----------------------------------------------------------------------------------

def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


def run(name: str, argv: Sequence[str], files: int, cwd: Optional[Path] = None, repeat: int = 1,
        env: Optional[Dict[str, str]] = None, note: str = "", check_codes=(0, 1),
        timeout: Optional[float] = None) -> Measure:
    """Run ``argv`` and measure it; past ``timeout`` seconds it is stopped and its wall time is
    the timeout, a lower bound (said in the row's note)."""
    best: Optional[Measure] = None
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak = [0]
        start = time.perf_counter()
        process = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_rss(process.pid))
                stop.wait(0.05)

        sampler = None
        if os.path.isdir("/proc"):
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            stop.set()
            print(f"  {name}: stopped unfinished after {timeout:.0f} s", file=sys.stderr)
            return Measure(name, float(timeout or 0), peak[0] / 2**20, files,
                           f"stopped unfinished after {timeout:.0f} s: a lower bound", "")
        wall = time.perf_counter() - start
        stop.set()
        if sampler:
            sampler.join()
        if process.returncode not in check_codes:
            raise SystemExit(f"{name} failed ({process.returncode}): {' '.join(argv)}\n{err[-2000:]}")
        maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        peak_bytes = peak[0] or (maxrss if maxrss > before * 1024 else 0)
        measure = Measure(name, wall, peak_bytes / 2**20, files, note, out)
        print(f"  {name}: {wall:.2f} s, {measure.peak_mib:.0f} MiB", file=sys.stderr)
        if best is None or measure.wall < best.wall:
            best = measure
    assert best is not None
    return best


def mllint(args: Sequence[str]) -> List[str]:
    return [sys.executable, "-c", MLLINT, *args]


# -- the report ----------------------------------------------------------------------------------

def table(measures: List[Measure], floor: Measure) -> str:
    rows = ["| measurement | files | wall (s) | files/s | peak memory (MiB) | x ast.parse floor |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in measures:
        rate = m.files / m.wall if m.wall else 0
        note = f" ({m.note})" if m.note else ""
        rows.append(f"| {m.name}{note} | {m.files} | {m.wall:.2f} | {rate:,.0f} | {m.peak_mib:.0f} | "
                    f"{m.wall / floor.wall:.2f} |")
    return "\n".join(rows)


def targets(by: Dict[str, Measure], single_file: Optional[Measure]) -> str:
    def line(label: str, value: float, limit: float, unit: str = "") -> str:
        verdict = "met" if value <= limit else f"missed by {value / limit:.2f}x"
        return f"| {label} | {value:.2f}{unit} | {limit:.2f}{unit} | {verdict} |"

    floor = by["floor"].wall
    rows = ["| target | measured | limit | verdict |", "| --- | ---: | ---: | --- |",
            line("cold, 2 jobs / ast.parse floor", by["cold"].wall / floor, 1.5, "x"),
            line("warm cache, whole corpus", by["warm"].wall, 1.0, " s"),
            line("warm / ruff default rules warm", by["warm"].wall / by["ruff_warm"].wall, 1.0, "x"),
            line("warm / ruff `--select E9` cold", by["warm"].wall / by["ruff_e9"].wall, 1.5, "x"),
            line("one changed file in a warm corpus, minus that file's own cost",
                 by["changed"].wall - by["changed_alone"].wall, 0.5, " s"),
            line("peak memory, cold at 2 jobs", by["cold"].peak_mib, 500, " MiB")]
    if single_file is not None:
        rows.append(line("a single 10,000-line file", single_file.wall, 5.0, " s"))
    if "torchfix" in by:
        rows.append(line("cold, 2 jobs / TorchFix (at most 0.1)", by["cold"].wall / by["torchfix"].wall, 0.1, "x"))
    return "\n".join(rows)


def big_file(directory: Path) -> Path:
    """A 10,000-line training script: the scenario fixtures (real findings) and corpus code."""
    parts = []
    fixtures = sorted((REPO / "tests" / "fixtures").glob("*/*.py"))
    lines = 0
    i = 0
    while lines < 10_000:
        source = fixtures[i % len(fixtures)].read_text(encoding="utf-8")
        block = f"def section_{i}():\n" + "".join(
            "    " + line if line.strip() else line for line in source.splitlines(keepends=True)) + "\n\n"
        parts.append(block)
        lines += block.count("\n")
        i += 1
    path = directory / "big_train.py"
    path.write_text("".join(parts), encoding="utf-8")
    return path


def profile(corpus: Path) -> str:
    """cProfile of a cold single-process run: where the time goes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "prof"
        script = Path(tmp) / "run_mllint.py"
        script.write_text(MLLINT, encoding="utf-8")
        subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), str(script), str(corpus),
                        "--no-cache", "-j", "1", "-q", "--exit-zero", "--output-format", "concise"],
                       stdout=subprocess.DEVNULL, check=True)
        import io
        import pstats

        stream = io.StringIO()
        stats = pstats.Stats(str(out), stream=stream)
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = []
        wanted = {
            "CPython parser (ast: syntax check + triage facts)": ("builtins.compile",),
            "triage facts walk (mllint.core.triage._collect)": ("triage.py", "_collect"),
            "libcst parse": ("entrypoints.py", "_parse"),
            "node index walk (mllint.core.context._fast_index)": ("context.py", "_fast_index"),
            "discovery (runner.discover)": ("runner.py", "discover"),
        }
        for label, key in wanted.items():
            cum = 0.0
            for (filename, _line, func), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
                if len(key) == 1 and func == "<built-in method builtins.compile>" and key[0] == "builtins.compile":
                    cum += tt
                elif len(key) == 2 and filename.endswith(key[0]) and func == key[1]:
                    cum += ct
            rows.append(f"| {label} | {cum:.1f} | {100 * cum / total:.0f}% |")
        return ("| part (cProfile, 1 job, cold; profiling inflates Python-heavy parts) | seconds | share |\n"
                "| --- | ---: | ---: |\n" + "\n".join(rows) + f"\n| total | {total:.1f} | 100% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mllint-bench")
    parser.add_argument("--repeat", type=int, default=1, help="keep the fastest of N runs of each")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--write", type=Path, help="write the tables into this markdown file")
    parser.add_argument("--no-peers", action="store_true", help="skip ruff and TorchFix")
    parser.add_argument("--torchfix-timeout", type=float, default=600,
                        help="stop TorchFix after this many seconds (its row is then a lower bound)")
    parser.add_argument("--no-libcst", action="store_true", help="skip the libcst parse-only pass")
    parser.add_argument("--profile", action="store_true", help="add a cProfile summary of a cold run")
    parser.add_argument("--compare-triage", action="store_true",
                        help="also run with --no-triage and require identical findings")
    args = parser.parse_args()
    cache = args.cache.expanduser()
    corpus = build_corpus(cache)
    files = sum(1 for _ in corpus.rglob("*.py"))
    print(f"corpus: {files} files in {corpus}", file=sys.stderr)
    bin_dir = None if args.no_peers else tools_venv(cache)
    py = sys.executable
    jobs = str(args.jobs)
    concise = ["-q", "--exit-zero", "--output-format", "concise"]
    measures: List[Measure] = []
    by: Dict[str, Measure] = {}

    def add(key: str, measure: Measure) -> Measure:
        by[key] = measure
        measures.append(measure)
        return measure

    work = Path(tempfile.mkdtemp(prefix="mllint-bench-"))
    try:
        cache_dir = work / "mllint-cache"
        add("floor", run("`ast.parse` of every file, 1 process (the floor)", [py, "-c", AST_FLOOR, str(corpus)],
                         files, repeat=args.repeat))
        cold = add("cold", run(f"mllint cold (`--no-cache`), {jobs} jobs",
                               mllint([str(corpus), "--no-cache", "-j", jobs, *concise]), files,
                               repeat=args.repeat))
        add("one_job", run("mllint cold, 1 job", mllint([str(corpus), "--no-cache", "-j", "1", *concise]),
                           files, repeat=args.repeat))
        run("(populate the cache)", mllint([str(corpus), "--cache-dir", str(cache_dir), "-j", jobs, *concise]), files)
        warm = add("warm", run("mllint warm cache, nothing changed",
                               mllint([str(corpus), "--cache-dir", str(cache_dir), "-j", jobs, *concise]),
                               files, repeat=args.repeat))
        if warm.output != cold.output:
            raise SystemExit("the warm run's findings differ from the cold run's")
        changed = sorted(corpus.rglob("*.py"))[len(list(corpus.rglob("*.py"))) // 2]
        original = changed.read_bytes()
        try:
            changed.write_bytes(original + b"\n# changed by bench/run.py\n")
            add("changed", run("mllint warm cache, one file changed",
                               mllint([str(corpus), "--cache-dir", str(cache_dir), "-j", jobs, *concise]),
                               files, note=changed.name))
            add("changed_alone", run("mllint on that file alone, cold", mllint([str(changed), "--no-cache", *concise]), 1))
        finally:
            changed.write_bytes(original)
        if args.compare_triage:
            off = run(f"mllint cold, triage off (`--no-triage`), {jobs} jobs",
                      mllint([str(corpus), "--no-cache", "--no-triage", "-j", jobs, *concise]), files)
            measures.append(off)
            same = off.output == cold.output
            print(f"  triage on/off findings identical: {same}", file=sys.stderr)
            off.note = "findings identical to triage on" if same else "FINDINGS DIFFER"
            if not same:
                raise SystemExit("triage changed the findings:\n" + "\n".join(
                    sorted(set(off.output.splitlines()) ^ set(cold.output.splitlines()))[:20]))
        if not args.no_libcst:
            add("libcst", run(f"libcst parse only, {jobs} processes", [py, "-c", LIBCST_PARSE, str(corpus), jobs],
                              files))
        if bin_dir is not None:
            ruff = str(bin_dir / "ruff")
            ruff_cache = work / "ruff-cache"
            add("ruff_e9", run("ruff check --select E9 --no-cache", [ruff, "check", "--select", "E9", "--no-cache",
                                                                     "--exit-zero", "-q", str(corpus)], files,
                               repeat=args.repeat))
            add("ruff_cold", run("ruff check (default rules) --no-cache", [ruff, "check", "--no-cache", "--exit-zero",
                                                                           "-q", str(corpus)], files, repeat=args.repeat))
            run("(populate ruff's cache)", [ruff, "check", "--cache-dir", str(ruff_cache), "--exit-zero", "-q",
                                            str(corpus)], files)
            add("ruff_warm", run("ruff check (default rules), warm cache",
                                 [ruff, "check", "--cache-dir", str(ruff_cache), "--exit-zero", "-q", str(corpus)], files,
                                 repeat=args.repeat))
            add("torchfix", run(f"TorchFix, {jobs} jobs", [str(bin_dir / "torchfix"), "-j", jobs, str(corpus)], files,
                                check_codes=(0, 1), timeout=args.torchfix_timeout))
        single = None
        big = big_file(work)
        single = run("mllint on one 10,000-line file", mllint([str(big), "--no-cache", *concise]), 1)
        measures.append(single)
        tables = table(measures, by["floor"])
        goal = targets(by, single) if "ruff_warm" in by else ""
        prof = profile(corpus) if args.profile else ""
    finally:
        shutil.rmtree(work, ignore_errors=True)

    command = "python bench/run.py " + " ".join(a for a in sys.argv[1:])
    report = [BEGIN, "", f"Command: `{command.strip()}`  ", f"Corpus: {files} files from {', '.join(WHEELS)}.  ",
              f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
              f"{time.strftime('%Y-%m-%d')}.",
              "", tables, ""]
    if goal:
        report += ["Targets:", "", goal, ""]
    if prof:
        report += ["Where the time of a cold run goes:", "", prof, ""]
    report.append(END)
    text = "\n".join(report)
    print(text)
    if args.write:
        path = args.write
        old = path.read_text(encoding="utf-8") if path.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
