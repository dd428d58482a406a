"""Files in, results out: discovery, reading, checking, fixing and writing.

Everything here is a layer over the pure core (``lint_source``/``fix_source``). ``process_file``
is a plain function of its arguments so it can run in a worker process.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from pathspec import PathSpec

from mllint.core.diagnostic import Diagnostic
from mllint.core.engine import fix_source, lint_source, system_diagnostic
from mllint.core.locator import Locator
from mllint.core.suppression import parse_suppressions
from mllint.cache import Cache, default_cache_dir, settings_fingerprint
from mllint.settings import ConfigError, ConfigResolver, Settings, gitignore_spec
from mllint.sources.notebook import (
    CellInfo, Notebook, fix_notebook, is_notebook, lint_notebook, parse_notebook, read_notebook)
from mllint.sources.python import SourceError, SourceFile, decode, read_bytes, read_source, write_source

PYTHON_SUFFIXES = (".py",)
NOTEBOOK_SUFFIXES = (".ipynb",)
SOURCE_SUFFIXES = PYTHON_SUFFIXES + NOTEBOOK_SUFFIXES  # what directories are searched for
ALWAYS_ENGINE_CODES = ("MLL902", "MLL903", "MLL904", "MLL905", "MLL999")


@dataclass
class FileResult:
    path: str  # as displayed
    diagnostics: List[Diagnostic] = field(default_factory=list)
    source: Optional[str] = None  # the (possibly fixed) text the diagnostics refer to
    fixed: int = 0  # number of fixes applied (or that would be, with --diff)
    diff: Optional[str] = None
    noqa_added: int = 0
    # Notebooks: every code cell's source and the file lines of its rows, by cell number.
    cells: Optional[Dict[int, CellInfo]] = None

    def with_diagnostics(self, diagnostics: List[Diagnostic]) -> "FileResult":
        return replace(self, diagnostics=diagnostics)

    def source_of(self, diag: Diagnostic) -> Optional[str]:
        """The text ``diag``'s rows refer to: its cell's source in a notebook, else the file's."""
        if diag.cell is not None and self.cells is not None:
            info = self.cells.get(diag.cell)
            return info.source if info is not None else None
        return self.source

    def file_row(self, diag: Diagnostic, end: bool = False) -> int:
        """The line of the file itself: in a notebook, the line of its JSON text that holds the
        cell's row (what a diff of the file, and so a code-review annotation, shows)."""
        row = (diag.end_location if end else diag.location).row
        if diag.cell is not None and self.cells is not None and diag.cell in self.cells:
            return self.cells[diag.cell].file_row(row)
        return row


def display_path(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


# -- discovery ---------------------------------------------------------------------------------

def _is_virtualenv(directory: Path) -> bool:
    try:
        return (directory / "pyvenv.cfg").is_file()
    except OSError:  # a directory mllint may not look into: reported when walked (MLL904)
        return False


class _GitIgnores:
    """``.gitignore`` files on the way from the repository root down to the current directory."""

    def __init__(self) -> None:
        self._cache: Dict[Path, Optional[PathSpec]] = {}
        # Per directory: the (directory, spec) pairs from it up to the repository root, only
        # those with a spec (looked up once per directory, not once per file).
        self._chains: Dict[Path, List[Tuple[Path, PathSpec]]] = {}

    def _chain(self, start: Path) -> List[Tuple[Path, PathSpec]]:
        chain = self._chains.get(start)
        if chain is None:
            chain = []
            for directory in (start, *start.parents):
                spec = self._spec(directory)
                if spec is not None:
                    chain.append((directory, spec))
                if (directory / ".git").exists():
                    break
            self._chains[start] = chain
        return chain

    def _spec(self, directory: Path) -> Optional[PathSpec]:
        if directory not in self._cache:
            lines: List[str] = []
            for name in (".gitignore", ".git/info/exclude"):
                try:
                    lines += (directory / name).read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
            self._cache[directory] = gitignore_spec(lines) if lines else None
        return self._cache[directory]

    def ignored(self, path: Path, is_dir: bool, top: Optional[Path] = None) -> bool:
        """``top``: the ignored directory named on the command line that ``path`` is below; the
        ``.gitignore`` files at or above it then see only the part of ``path`` below ``top``."""
        path = path.absolute()
        for directory, spec in self._chain(path.parent):
            base = top if top is not None and _is_within(top, directory) else directory
            rel = path.relative_to(base).as_posix() + ("/" if is_dir else "")
            if spec.match_file(rel):
                return True
        return False


def discover(paths: Sequence[str], resolver: ConfigResolver, force_exclude: bool = False) -> List[Path]:
    """Python files to check, in a stable order. Explicitly named files are checked even when
    excluded, unless ``force_exclude``; a path that does not exist is a ``ConfigError``."""
    gitignores = _GitIgnores()
    out: List[Path] = []
    seen: Set[Path] = set()

    def add(path: Path) -> None:
        key = path.absolute()
        if key not in seen:
            seen.add(key)
            out.append(path)

    for given in paths:
        path = Path(given)
        if not path.exists() and not path.is_symlink():
            raise ConfigError(f"path `{given}` does not exist")
        is_dir = path.is_dir()
        settings = resolver.for_path(path)
        if (force_exclude or settings.force_exclude) and (
                _excluded(path, is_dir, settings, gitignores) or _in_virtualenv(path, settings)):
            continue
        if is_dir:
            for found in _walk(path, resolver, gitignores):
                add(found)
        else:
            add(path)
    return out


def _in_virtualenv(path: Path, settings: Settings) -> bool:
    """Whether a directory between ``path`` and the project root is a virtualenv."""
    root = Path(settings.root or os.getcwd())
    for parent in path.absolute().parents:
        if not _is_within(parent, root) or parent == root:
            return False
        if _is_virtualenv(parent):
            return True
    return False


def _is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _excluded(path: Path, is_dir: bool, settings: Settings, gitignores: _GitIgnores,
              top: Optional[Path] = None) -> bool:
    """``top``: an excluded directory named on the command line that ``path`` is below. What
    excludes ``top`` itself (or a directory above it) is not held against what is inside it: its
    entries are matched by their path below ``top``, as when ``top`` is the project root."""
    if top is not None:
        root = Path(settings.root or os.getcwd())
        if not (root != top and _is_within(root, top)):  # the config file is not inside ``top``
            settings = settings.with_changes(root=str(top))
    if settings.is_excluded(str(path), is_dir):
        return True
    if is_dir and _is_virtualenv(path):
        return True
    return settings.respect_gitignore and gitignores.ignored(path, is_dir, top)


def _walk(root: Path, resolver: ConfigResolver, gitignores: _GitIgnores) -> Iterator[Path]:
    # A directory named explicitly is walked even when excluded (`mllint build/`, or a project
    # below a directory called `build` outside the project root); only its entries are judged.
    top = root.absolute() if _excluded(root, True, resolver.for_path(root), gitignores) else None
    stack = [root]
    visited: Set[Tuple[int, int]] = set()  # (device, inode): a symlink loop is walked once
    while stack:
        directory = stack.pop()
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in visited and info.st_ino:
                continue
            visited.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except PermissionError:
            yield directory  # reading it reports the problem (MLL904), so it is not skipped silently
            continue
        except OSError:
            continue  # vanished since it was listed: nothing to check inside
        settings = resolver.for_path(directory)
        subdirs = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:  # a symlink loop: reading it reports the problem (MLL904)
                is_dir = False
            if is_dir:
                if not _excluded(path, True, settings, gitignores, top):
                    subdirs.append(path)
            elif entry.name.endswith(SOURCE_SUFFIXES) and not _excluded(path, False, settings, gitignores, top):
                yield path
        stack.extend(reversed(subdirs))


# -- checking one file ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    fix: bool = False
    unsafe: bool = False
    diff: bool = False  # compute fixes, write nothing
    add_noqa: bool = False


def _error_result(display: str, error: SourceError) -> FileResult:
    return FileResult(display, [system_diagnostic(error.code, error.message)])


def process_source(source: SourceFile, display: str, settings: Settings, mode: Mode) -> FileResult:
    """Check (and maybe fix) one decoded file; writes only in fix/add-noqa modes without diff."""
    text = source.text
    if mode.add_noqa:
        diagnostics = lint_source(text, display, settings)
        new_text, added = add_noqa(text, diagnostics)
        result = FileResult(display, [], new_text, noqa_added=added)
        if added and not mode.diff:
            _write(source, new_text, result)
        return result
    if not (mode.fix or mode.diff):
        return FileResult(display, lint_source(text, display, settings), text)
    fixed = fix_source(text, display, settings, unsafe=mode.unsafe)
    result = FileResult(display, list(fixed.remaining), fixed.source, fixed=len(fixed.applied))
    if fixed.source != text:
        if mode.diff:
            result.diff = unified_diff(text, fixed.source, display)
        elif not _write(source, fixed.source, result):  # the file is as it was: so are its findings
            result = FileResult(display, result.diagnostics[:1] + lint_source(text, display, settings), text)
    return result


def process_notebook(notebook: Notebook, display: str, settings: Settings, mode: Mode) -> FileResult:
    """``process_source`` for a notebook: diagnostics are located in cells, fixes and ``# noqa``
    directives are written into the cells (nothing is written in diff mode)."""
    if not notebook.python:  # an R, Julia, ... notebook: nothing to check
        return FileResult(display, [], notebook.text, cells={})
    try:
        return _process_notebook(notebook, display, settings, mode)
    except SourceError as error:  # the splice check failed: report, write nothing
        return FileResult(display, [system_diagnostic(error.code, error.message)], notebook.text)


def _guard(display: str, work: Callable[[], FileResult]) -> FileResult:
    """Run ``work``; a bug (in mllint, a rule pack or the notebook adapter) becomes MLL999 for
    this file, and the run goes on (``MLLINT_DEBUG=1`` lets it raise)."""
    try:
        return work()
    except SourceError as error:
        return _error_result(display, error)
    except Exception as exc:
        if os.environ.get("MLLINT_DEBUG"):
            raise
        return FileResult(display, [system_diagnostic(
            "MLL999", f"internal error on {display}: {type(exc).__name__}: {exc}; please report this bug")])


def _process_notebook(notebook: Notebook, display: str, settings: Settings, mode: Mode) -> FileResult:
    view = notebook.view
    if mode.add_noqa:
        diagnostics = lint_source(view.text, display, settings)
        sources, added = view.apply(noqa_edits(view.text, diagnostics), skip_outside=True)
        new_text = notebook.render(sources)
        result = FileResult(display, [], new_text, noqa_added=added)
        if added and not mode.diff:
            _write(notebook.source, new_text, result)
        return result
    if not (mode.fix or mode.diff):
        return FileResult(display, lint_notebook(notebook, display, settings), notebook.text,
                          cells=notebook.cell_info())
    fixed = fix_notebook(notebook, display, settings, unsafe=mode.unsafe)
    if not fixed.sources:
        return FileResult(display, list(fixed.remaining), notebook.text, fixed=len(fixed.applied),
                          cells=notebook.cell_info())
    new_text = notebook.render(fixed.sources)
    new_notebook = parse_notebook(new_text.encode("utf-8"), notebook.path)
    result = FileResult(display, list(fixed.remaining), new_text, fixed=len(fixed.applied),
                        cells=new_notebook.cell_info())
    if mode.diff:
        result.diff = notebook_diff(notebook.sources, fixed.sources, display)
    elif not _write(notebook.source, new_text, result):  # the file is as it was: so are its findings
        result = FileResult(display, result.diagnostics[:1] + lint_notebook(notebook, display, settings),
                            notebook.text, cells=notebook.cell_info())
    return result


def notebook_diff(old: Dict[int, str], new: Dict[int, str], display: str) -> str:
    """A unified diff per changed cell, headed ``a/PATH:cell N`` / ``b/PATH:cell N``."""
    return "".join(unified_diff(old[n], new[n], f"{display}:cell {n}") for n in sorted(new))


def _write(source: SourceFile, text: str, result: FileResult) -> bool:
    """Write ``text``; when that fails, report why (first in ``result``) and return False."""
    try:
        write_source(source, text)
    except SourceError as error:
        result.diagnostics.insert(0, system_diagnostic(error.code, error.message))
        result.fixed = 0
        result.noqa_added = 0
        return False
    return True


def process_file(path: Path, settings: Settings, mode: Mode) -> FileResult:
    display = display_path(path)
    if is_notebook(str(path)):
        return _guard(display, lambda: process_notebook(read_notebook(str(path)), display, settings, mode))
    return _guard(display, lambda: process_source(read_source(str(path)), display, settings, mode))


def process_stdin(data: bytes, display: str, settings: Settings, mode: Mode) -> FileResult:
    """Standard input: fixes are returned in ``result.source`` and never written (a
    ``--stdin-filename`` ending in ``.ipynb`` reads a notebook)."""
    # Never write (diff mode) when fixing or adding noqa; a plain check must not fix either.
    write_nothing = mode.fix or mode.diff or mode.add_noqa
    stdin_mode = Mode(mode.fix, mode.unsafe, write_nothing, mode.add_noqa)
    if is_notebook(display):
        return _guard(display, lambda: process_notebook(parse_notebook(data, display), display, settings, stdin_mode))
    return _guard(display, lambda: process_source(SourceFile(display, *decode(data), data), display, settings, stdin_mode))


def unified_diff(old: str, new: str, display: str) -> str:
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=f"a/{display}", tofile=f"b/{display}")
    return "".join(line if line.endswith(("\n", "\r")) else line + "\n\\ No newline at end of file\n"
                   for line in lines)


# -- --add-noqa ----------------------------------------------------------------------------------

def add_noqa(source: str, diagnostics: Iterable[Diagnostic]) -> Tuple[str, int]:
    """Add ``# noqa: CODE`` for every diagnostic, merging into existing directives."""
    edits = noqa_edits(source, diagnostics)
    for start, end, content in sorted(edits, reverse=True):
        source = source[:start] + content + source[end:]
    return source, len(edits)


def noqa_edits(source: str, diagnostics: Iterable[Diagnostic]) -> List[Tuple[int, int, str]]:
    """The edits ``add_noqa`` makes: (start, end, content), at most one per line."""
    locator = Locator(source)
    suppressions = parse_suppressions(source, locator)
    wanted: Dict[int, List[str]] = {}
    for diag in diagnostics:
        if diag.code in ALWAYS_ENGINE_CODES:
            continue
        row = diag.noqa_row or diag.location.row
        codes = wanted.setdefault(row, [])
        if diag.code not in codes:
            codes.append(diag.code)
    edits = []
    for row, codes in wanted.items():
        directive = suppressions.lines.get(row)
        if directive is not None:
            if directive.codes is None:
                continue
            merged = list(directive.codes) + [c for c in codes if c not in directive.codes]
            edits.append((directive.start, directive.end, "# noqa: " + ", ".join(merged)))
        else:
            end = locator.line_end(row)
            line = locator.line(row)
            stripped = line.rstrip()
            at = end - (len(line) - len(stripped))
            edits.append((at, end, "  # noqa: " + ", ".join(sorted(codes))))
    return edits


# -- many files: the result cache and the worker pool --------------------------------------------
#
# ``check_files`` yields one result per file, in the order of ``files``, as soon as it and every
# file before it are done. Cache hits are answered in this process; the other files are checked
# here too when there are only a handful (``FAST_PATH_FILES``: starting workers costs more than
# it saves), else by a pool of ``jobs`` worker processes, each file through ``check_file`` (which
# reads it, checks it and stores its result, so the stored key is always that of the bytes that
# were checked). Only plain checks use the cache: fixing modes read, check and write afresh.

FAST_PATH_FILES = 4


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _plain(mode: Mode) -> bool:
    return not (mode.fix or mode.diff or mode.add_noqa)


def _process_raw(path: Path, display: str, raw: bytes, settings: Settings, mode: Mode) -> FileResult:
    """``process_file`` on bytes already read."""
    if is_notebook(str(path)):
        return _guard(display, lambda: process_notebook(parse_notebook(raw, str(path)), display, settings, mode))
    return _guard(display, lambda: process_source(SourceFile(str(path), *decode(raw), raw), display, settings, mode))


def _from_cache(path: Path, display: str, raw: bytes, diagnostics: List[Diagnostic]) -> FileResult:
    """A cached result; the text (and a notebook's cells) only when there is something to show."""
    if not diagnostics:
        return FileResult(display, [])
    try:
        if is_notebook(str(path)):
            notebook = parse_notebook(raw, str(path))
            return FileResult(display, diagnostics, notebook.text, cells=notebook.cell_info())
        return FileResult(display, diagnostics, decode(raw)[0])
    except SourceError:
        return FileResult(display, diagnostics)


def check_file(path: Path, settings: Settings, mode: Mode, cache: "Optional[Cache]" = None,
               settings_key: Optional[str] = None) -> FileResult:
    """``process_file`` through ``cache`` (for plain checks; other modes never use it)."""
    if cache is None or not _plain(mode):
        return process_file(path, settings, mode)
    display = display_path(path)
    try:
        raw = read_bytes(str(path))
    except OSError:
        return process_file(path, settings, mode)  # reports why (MLL904)
    key = cache.key(display, str(path), settings_key or settings_fingerprint(settings), raw)
    diagnostics = cache.get(key)
    if diagnostics is not None:
        return _from_cache(path, display, raw, diagnostics)
    result = _process_raw(path, display, raw, settings, mode)
    cache.put(key, result.diagnostics)
    return result


class _Plan:
    """What every file needs, by index: its settings (shared objects), their cache key part and
    cache, and its mode."""

    def __init__(self, files: Sequence[Path], settings_for: Callable[[Path], Settings],
                 mode_for: Callable[[Settings], Mode], use_cache: bool) -> None:
        self.files = [str(f) for f in files]
        self.settings: List[Settings] = []
        self.keys: List[str] = []
        self.modes: List[Mode] = []
        self.caches: List[Optional[Cache]] = []
        self.index: List[int] = []  # file -> its settings' position in the lists above
        seen: Dict[int, int] = {}
        by_dir: Dict[Path, Cache] = {}
        for path in files:
            settings = settings_for(path)
            position = seen.get(id(settings))
            if position is None:
                position = seen[id(settings)] = len(self.settings)
                mode = mode_for(settings)
                self.settings.append(settings)
                self.modes.append(mode)
                self.keys.append(settings_fingerprint(settings))
                cache = None
                if use_cache and _plain(mode):
                    directory = default_cache_dir(settings)
                    cache = by_dir.setdefault(directory, Cache(directory))
                self.caches.append(cache)
            self.index.append(position)

    def check(self, i: int) -> FileResult:
        s = self.index[i]
        return check_file(Path(self.files[i]), self.settings[s], self.modes[s], self.caches[s], self.keys[s])

    def cached(self, i: int) -> Optional[FileResult]:
        """The cached result of file ``i``, or None."""
        s = self.index[i]
        cache = self.caches[s]
        if cache is None:
            return None
        path = self.files[i]
        try:
            raw = read_bytes(path)
        except OSError:
            return None
        display = display_path(Path(path))
        diagnostics = cache.get(cache.key(display, path, self.keys[s], raw))
        return None if diagnostics is None else _from_cache(Path(path), display, raw, diagnostics)


_WORKER_PLAN: Optional[_Plan] = None


# Parsing makes millions of short-lived objects, almost none in reference cycles: with CPython's
# default thresholds (700, 10, 10) the collector runs thousands of times per file set and keeps
# walking every object of the loaded modules. Those are frozen (never collected), and the young
# generation is collected less often; this takes a third off the CPython and libcst parses.
_GC_THRESHOLDS = (10_000, 50, 50)


def _tune_gc() -> Tuple[int, ...]:
    import gc

    gc.freeze()
    previous = gc.get_threshold()
    gc.set_threshold(*_GC_THRESHOLDS)
    return previous


def _worker_init(plan: Optional[_Plan]) -> None:
    global _WORKER_PLAN
    if plan is not None:  # spawned workers get the plan pickled; forked ones inherit it
        _WORKER_PLAN = plan
    _tune_gc()


def _worker_check(i: int) -> FileResult:
    assert _WORKER_PLAN is not None
    result = _WORKER_PLAN.check(i)
    if not result.diagnostics:  # nothing to show: the text need not travel back
        result.source, result.cells = None, None
    return result


def _pool_context():
    import multiprocessing
    import sys

    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")  # workers inherit the loaded rules: no re-import
    return multiprocessing.get_context("spawn")


def check_files(files: Sequence[Path], settings_for: Callable[[Path], Settings],
                mode_for: Callable[[Settings], Mode], jobs: Optional[int] = None,
                use_cache: bool = True) -> Iterator[FileResult]:
    """Check ``files``; one result per file, in order, each as soon as it and those before it
    are done. ``jobs``: worker processes (default: the available cores; 1: none)."""
    global _WORKER_PLAN
    plan = _Plan(files, settings_for, mode_for, use_cache)
    jobs = default_jobs() if not jobs else jobs
    done: Dict[int, FileResult] = {}
    if use_cache:
        for i in range(len(files)):
            hit = plan.cached(i)
            if hit is not None:
                done[i] = hit
    todo = [i for i in range(len(files)) if i not in done]
    if jobs <= 1 or len(todo) <= FAST_PATH_FILES:
        import gc

        previous = _tune_gc() if len(todo) > FAST_PATH_FILES else None
        try:
            for i in range(len(files)):
                yield done.pop(i) if i in done else plan.check(i)
        finally:
            if previous is not None:
                gc.unfreeze()
                gc.set_threshold(*previous)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from mllint.core.registry import default_registry

    default_registry()  # loaded once here, inherited by forked workers
    context = _pool_context()
    forked = context.get_start_method() == "fork"
    _WORKER_PLAN = plan
    chunksize = max(1, min(8, len(todo) // (jobs * 8)))
    executor = ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context, initializer=_worker_init,
                                   initargs=(None if forked else plan,))
    finished = False
    try:
        results = executor.map(_worker_check, todo, chunksize=chunksize)
        for i in range(len(files)):
            if i in done:
                yield done.pop(i)
                continue
            try:
                yield next(results)
            except BrokenProcessPool:  # a worker died (killed, out of memory): finish here
                results = iter(())
                for j in range(i, len(files)):
                    yield done.pop(j) if j in done else plan.check(j)
                break
        finished = True
    finally:  # stopped early (an error, Ctrl-C): do not wait for the workers' current files
        executor.shutdown(wait=finished, cancel_futures=True)
        _WORKER_PLAN = None
