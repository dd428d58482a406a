"""The language server: pygls over stdio, the pure core in one lint thread.

Scheduling. Handlers run on pygls' asyncio loop and never lint there. A document is linted when it
is opened or saved (at once) and after it changed (``debounce`` seconds after the last change,
0.25 s by default, ``initializationOptions.debounce``): each change cancels the document's
pending lint and schedules a new one. A lint snapshots the text(s) on the loop, then resolves
the settings and runs ``lint_source`` in a single worker thread, so the loop keeps reading
messages (cancellations, further edits, ``shutdown``) while a large file is checked; one worker
because linting is CPU-bound Python (parallel lints would only contend for the GIL) and so that
the configuration resolver is used by one thread only. The result is published only if the
document still has the text that was linted; otherwise a newer lint is already scheduled.
Code actions use the last lint when it is current and lint at once when it is not, so their
edits always apply to the text the client has.

Configuration is resolved per document exactly as the CLI does (``ConfigResolver``: the nearest
``pyproject.toml`` with ``[tool.mllint]``, ``mllint.toml`` or ``.mllint.toml``;
``initializationOptions.config``/``isolated`` act as ``--config``/``--isolated``). It is
re-read, and every open document re-linted, when the client reports a change of such a file
(``workspace/didChangeWatchedFiles``, registered dynamically where the client allows it), when
one is saved in the editor, and when a lint notices that a config file on the way up from the
document changed on disk (for clients that watch nothing). A broken config file is reported once
with ``window/showMessage``; the documents it governs get no diagnostics until it is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union
from urllib.parse import unquote

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path, uri_scheme

from mllint import __version__
from mllint.server import convert, documents
from mllint.server.documents import Cell, Linted
from mllint.settings import CONFIG_FILES, ConfigError, ConfigResolver, Settings

log = logging.getLogger("mllint.server")

DEFAULT_DEBOUNCE = 0.25
MAX_DEBOUNCE = 10.0
CELL_SCHEME = "vscode-notebook-cell"
CONFIG_NAMES = frozenset(CONFIG_FILES)
# Files the project's version pins are read from (``mllint.versions.pins``): target versions
# decide whether a rule's premise holds, so a change re-reads the settings too.
PIN_GLOBS = ("**/setup.cfg", "**/*requirements*.txt", "**/constraints*.txt", "**/requirements/*.txt")
WATCHER_ID = "mllint-config-watcher"


@dataclass(frozen=True)
class Snapshot:
    """What one lint reads: a Python document's text, or a notebook's code cells."""

    key: str  # the document's URI, or the notebook's
    path: str  # the file system path (or the URI, for a document that is not a file)
    text: Optional[str] = None
    cells: Optional[Tuple[Cell, ...]] = None


@dataclass
class Result:
    snapshot: Snapshot
    linted: Optional[Linted] = None
    settings: Optional[Settings] = None
    error: Optional[str] = None  # a configuration error: no diagnostics for this document
    config_changed: bool = False  # a config file changed on disk since it was last read


def path_of(uri: str) -> Optional[str]:
    """The file system path of a ``file:`` URI; None for any other (``untitled:``, ...)."""
    if uri_scheme(uri) not in ("file", ""):
        return None
    return to_fs_path(uri)


class MllintServer(LanguageServer):
    def __init__(self) -> None:
        sync = lsp.NotebookDocumentSyncOptions(
            notebook_selector=[lsp.NotebookDocumentFilterWithCells(
                cells=[lsp.NotebookCellLanguage(language="python")])],
            save=True)
        super().__init__("mllint", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental,
                         notebook_document_sync=sync)
        self.debounce = DEFAULT_DEBOUNCE
        self.config_file: Optional[Path] = None
        self.isolated = False
        self.resolver: Optional[ConfigResolver] = None  # used by the lint thread only
        self.lint_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mllint-lint")
        self.pending: Dict[str, "asyncio.Task[Any]"] = {}
        self.results: Dict[str, Result] = {}
        self.published: Dict[str, Set[str]] = {}  # key -> URIs that have diagnostics shown
        self.shown_errors: Set[str] = set()
        self.stamps: Dict[str, Tuple[Tuple[str, int], ...]] = {}  # directory -> config files' mtimes
        self.shutdown_requested = False

    # -- options ---------------------------------------------------------------------------------

    def configure(self, options: Any, root: Optional[str]) -> List[str]:
        """Apply ``initializationOptions``; returns the problems found (shown to the user)."""
        problems: List[str] = []
        if not isinstance(options, dict):
            return problems if options is None else ["initializationOptions must be an object"]
        if "debounce" in options:
            value = options["debounce"]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_DEBOUNCE:
                self.debounce = float(value)
            else:
                problems.append(f"`debounce` must be a number of seconds from 0 to {MAX_DEBOUNCE:g}")
        if "isolated" in options:
            if isinstance(options["isolated"], bool):
                self.isolated = options["isolated"]
            else:
                problems.append("`isolated` must be true or false")
        config = options.get("config")
        if config is not None:
            if isinstance(config, str) and config.strip():
                path = Path(os.path.expanduser(config))
                self.config_file = path if path.is_absolute() or root is None else Path(root) / path
            else:
                problems.append("`config` must be the path of a config file")
        return problems

    # -- documents ---------------------------------------------------------------------------------

    def key_of(self, uri: str) -> Optional[str]:
        """The lint key a document belongs to: the notebook's URI for a cell, else its own."""
        notebook = self.workspace.get_notebook_document(cell_uri=uri)
        if notebook is not None:
            return notebook.uri
        if self.workspace.get_notebook_document(notebook_uri=uri) is not None:
            return uri
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None or not self.is_python(document.uri, document.language_id):
            return None
        return document.uri

    @staticmethod
    def is_python(uri: str, language_id: Optional[str]) -> bool:
        if uri_scheme(uri) == CELL_SCHEME:  # a cell outside notebook sync: linting it alone misleads
            return False
        path = unquote(uri).split("?", 1)[0]
        return language_id == "python" or (language_id in (None, "") and path.endswith(".py"))

    def snapshot(self, key: str) -> Optional[Snapshot]:
        notebook = self.workspace.get_notebook_document(notebook_uri=key)
        if notebook is not None:
            cells = []
            for number, cell in enumerate(notebook.cells, 1):
                if cell.kind != lsp.NotebookCellKind.Code:
                    continue
                document = self.workspace.text_documents.get(unquote(cell.document))
                if document is None or document.language_id not in (None, "", "python"):
                    continue
                cells.append(Cell(number, cell.document, document.source))
            return Snapshot(key, path_of(key) or key, cells=tuple(cells))
        document = self.workspace.text_documents.get(unquote(key))
        if document is None:
            return None
        return Snapshot(key, path_of(key) or key, text=document.source)

    def open_keys(self) -> List[str]:
        keys = [nb.uri for nb in self.workspace.notebook_documents.values()]
        cells = {unquote(c.document) for nb in self.workspace.notebook_documents.values() for c in nb.cells}
        for name, document in self.workspace.text_documents.items():
            if name not in cells and self.is_python(document.uri, document.language_id):
                keys.append(document.uri)
        return keys

    # -- linting (the lint thread) --------------------------------------------------------------------

    def _anchor(self, snapshot: Snapshot) -> Path:
        """The path settings are resolved for: the file, or a file in the workspace root."""
        path = path_of(snapshot.key)
        if path is not None:
            return Path(path)
        try:
            root = self.workspace.root_path
        except RuntimeError:  # not initialized
            root = None
        return Path(root or os.getcwd()) / "untitled.py"

    def _config_stamp(self, directory: Path) -> Tuple[Tuple[str, int], ...]:
        """The files at or above ``directory`` settings may come from (config files, and
        ``pyproject.toml``/``setup.cfg`` for pins; ``config`` too), with their mtimes."""
        if self.isolated:
            return ()
        candidates: List[Path] = [self.config_file] if self.config_file is not None else []
        names = (*CONFIG_FILES, "setup.cfg")
        candidates += [d / name for d in (directory, *directory.parents) for name in names]
        stamp = []
        for candidate in candidates:
            try:
                stamp.append((str(candidate), os.stat(candidate).st_mtime_ns))
            except OSError:
                continue
        return tuple(stamp)

    def lint_now(self, snapshot: Snapshot, encoding: str) -> Result:
        """Resolve the settings and lint (runs in the lint thread)."""
        anchor = self._anchor(snapshot)
        directory = anchor.parent
        stamp = self._config_stamp(directory)
        known = self.stamps.get(str(directory))
        changed = known is not None and known != stamp
        self.stamps[str(directory)] = stamp
        if changed:
            self.resolver = None
        try:
            resolver = self.resolver
            if resolver is None:
                resolver = self.resolver = ConfigResolver({}, self.config_file, isolated=self.isolated)
            settings = resolver.for_path(anchor)
        except ConfigError as exc:
            return Result(snapshot, error=str(exc), config_changed=changed)
        except OSError as exc:
            return Result(snapshot, error=f"cannot read the configuration: {exc}", config_changed=changed)
        if settings.force_exclude and anchor.exists() and self._excluded(anchor, resolver):
            linted = Linted(snapshot.path, encoding, self._uris(snapshot), {})
        elif snapshot.cells is not None:
            linted = documents.lint_cells(snapshot.cells, snapshot.path, settings, encoding)
        else:
            assert snapshot.text is not None
            linted = documents.lint_text(snapshot.key, snapshot.text, snapshot.path, settings, encoding)
        return Result(snapshot, linted, settings, config_changed=changed)

    @staticmethod
    def _excluded(path: Path, resolver: ConfigResolver) -> bool:
        """``force-exclude``: the CLI's rule for files named explicitly."""
        from mllint.runner import discover

        try:
            return not discover([str(path)], resolver)
        except ConfigError:
            return False

    @staticmethod
    def _uris(snapshot: Snapshot) -> Tuple[str, ...]:
        return tuple(c.uri for c in snapshot.cells) if snapshot.cells is not None else (snapshot.key,)

    # -- linting (the loop) ------------------------------------------------------------------------

    def schedule(self, key: str, delay: float) -> None:
        """Lint ``key`` after ``delay`` seconds, replacing a lint scheduled before."""
        previous = self.pending.pop(key, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.ensure_future(self._lint_later(key, delay))
        self.pending[key] = task
        task.add_done_callback(lambda t, key=key: self.pending.pop(key, None) if self.pending.get(key) is t else None)

    async def _lint_later(self, key: str, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self.lint(key)

    async def lint(self, key: str) -> Optional[Result]:
        """Lint ``key``'s current text and publish; None when the document is gone or changed
        while it was linted (a newer lint is then scheduled)."""
        snapshot = self.snapshot(key)
        if snapshot is None:
            return None
        encoding = convert.normalize_encoding(self.workspace.position_encoding)
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self.lint_pool, self.lint_now, snapshot, encoding)
        except Exception as exc:  # a bug: say so once, keep serving
            log.exception("linting %s failed", key)
            self.show_error(f"mllint: internal error while checking {snapshot.path}: {type(exc).__name__}: {exc}")
            return None
        if self.snapshot(key) != snapshot:
            return None
        self.results[key] = result
        self.publish(key, result)
        if result.config_changed:
            self.reload_config(except_key=key)
        return result

    async def current(self, key: str) -> Optional[Result]:
        """The lint of ``key``'s current text: the last one if still current, else a new one."""
        snapshot = self.snapshot(key)
        cached = self.results.get(key)
        if cached is not None and cached.snapshot == snapshot:
            return cached
        pending = self.pending.pop(key, None)
        if pending is not None:
            pending.cancel()
        for _ in range(3):  # the text may change again while it is linted
            result = await self.lint(key)
            if result is not None:
                return result
        return None

    def publish(self, key: str, result: Result) -> None:
        if result.error is not None:
            self.show_error(f"mllint: {result.error}")
            diagnostics: Dict[str, List[lsp.Diagnostic]] = {uri: [] for uri in self._uris(result.snapshot)}
        else:
            assert result.linted is not None
            diagnostics = result.linted.diagnostics()
        before = self.published.get(key, set())
        for uri in before - set(diagnostics):  # cells deleted since the last lint
            diagnostics[uri] = []
        for uri, items in diagnostics.items():
            version = None
            document = self.workspace.text_documents.get(unquote(uri))
            if result.snapshot.text is not None and document is not None:
                version = document.version
            self.text_document_publish_diagnostics(
                lsp.PublishDiagnosticsParams(uri=uri, diagnostics=items, version=version))
        self.published[key] = {uri for uri, items in diagnostics.items() if items}

    def forget(self, key: str, uris: Iterable[str] = ()) -> None:
        """A document was closed: clear its diagnostics and state."""
        pending = self.pending.pop(key, None)
        if pending is not None:
            pending.cancel()
        self.results.pop(key, None)
        for uri in self.published.pop(key, set()) | set(uris):
            self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[]))

    def show_error(self, message: str) -> None:
        if message in self.shown_errors:
            return
        self.shown_errors.add(message)
        log.error("%s", message)
        self.window_show_message(lsp.ShowMessageParams(type=lsp.MessageType.Error, message=message))

    def reload_config(self, except_key: Optional[str] = None) -> None:
        """Forget every resolved setting and re-lint every open document."""
        self.resolver = None
        self.stamps.clear()
        self.shown_errors.clear()
        for key in self.open_keys():
            if key != except_key:  # linted with the new configuration already
                self.schedule(key, 0)


def warm_up() -> None:
    from mllint.core.registry import default_registry

    try:
        default_registry()
    except Exception:  # reported by the first lint
        pass


def is_config_uri(uri: str) -> bool:
    """Whether ``uri`` names a file the settings are read from (configuration or pins)."""
    parts = unquote(uri).split("?", 1)[0].rstrip("/").rsplit("/", 2)
    name = parts[-1].lower()
    if name in CONFIG_NAMES or name == "setup.cfg":
        return True
    in_requirements = len(parts) > 1 and parts[-2] == "requirements"
    return name.endswith(".txt") and ("requirements" in name or name.startswith("constraints") or in_requirements)


def create_server() -> MllintServer:
    server = MllintServer()

    @server.feature(lsp.INITIALIZE)
    def initialize(params: lsp.InitializeParams) -> None:
        root = None
        if params.root_uri:
            root = path_of(params.root_uri)
        elif params.root_path:
            root = params.root_path
        for problem in server.configure(params.initialization_options, root):
            server.show_error(f"mllint: initializationOptions: {problem}")

    @server.feature(lsp.INITIALIZED)
    def initialized(params: lsp.InitializedParams) -> None:
        server.lint_pool.submit(warm_up)  # load the rules while the client opens its documents
        watched = server.client_capabilities.workspace
        dynamic = watched is not None and watched.did_change_watched_files is not None and bool(
            watched.did_change_watched_files.dynamic_registration)
        if not dynamic:
            return
        globs = [f"**/{name}" for name in CONFIG_FILES] + list(PIN_GLOBS)
        watchers = [lsp.FileSystemWatcher(glob_pattern=glob) for glob in globs]
        server.client_register_capability(lsp.RegistrationParams(registrations=[lsp.Registration(
            id=WATCHER_ID, method=lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=lsp.DidChangeWatchedFilesRegistrationOptions(watchers=watchers))]))

    @server.feature(lsp.SHUTDOWN)
    def shutdown(params: Any) -> None:
        server.shutdown_requested = True
        for task in list(server.pending.values()):
            task.cancel()
        server.pending.clear()

    @server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: lsp.DidOpenTextDocumentParams) -> None:
        key = server.key_of(params.text_document.uri)
        if key is not None:
            server.schedule(key, 0)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: lsp.DidChangeTextDocumentParams) -> None:
        key = server.key_of(params.text_document.uri)
        if key is not None:
            server.schedule(key, server.debounce)

    @server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
    def did_save(params: lsp.DidSaveTextDocumentParams) -> None:
        if is_config_uri(params.text_document.uri):
            server.reload_config()
            return
        key = server.key_of(params.text_document.uri)
        if key is not None:
            server.schedule(key, 0)

    @server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: lsp.DidCloseTextDocumentParams) -> None:
        server.forget(params.text_document.uri)

    @server.feature(lsp.NOTEBOOK_DOCUMENT_DID_OPEN)
    def notebook_open(params: lsp.DidOpenNotebookDocumentParams) -> None:
        server.schedule(params.notebook_document.uri, 0)

    @server.feature(lsp.NOTEBOOK_DOCUMENT_DID_CHANGE)
    def notebook_change(params: lsp.DidChangeNotebookDocumentParams) -> None:
        server.schedule(params.notebook_document.uri, server.debounce)

    @server.feature(lsp.NOTEBOOK_DOCUMENT_DID_SAVE)
    def notebook_save(params: lsp.DidSaveNotebookDocumentParams) -> None:
        server.schedule(params.notebook_document.uri, 0)

    @server.feature(lsp.NOTEBOOK_DOCUMENT_DID_CLOSE)
    def notebook_close(params: lsp.DidCloseNotebookDocumentParams) -> None:
        server.forget(params.notebook_document.uri, [c.uri for c in params.cell_text_documents])

    @server.feature(lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def watched_files(params: lsp.DidChangeWatchedFilesParams) -> None:
        if any(is_config_uri(change.uri) for change in params.changes):
            server.reload_config()

    @server.feature(lsp.TEXT_DOCUMENT_CODE_ACTION, lsp.CodeActionOptions(
        code_action_kinds=[lsp.CodeActionKind.QuickFix, convert.FIX_ALL_KIND]))
    async def code_action(params: lsp.CodeActionParams) -> Optional[List[lsp.CodeAction]]:
        uri = params.text_document.uri
        key = server.key_of(uri)
        if key is None:
            return None
        result = await server.current(key)
        if result is None or result.linted is None:
            return None
        linted, settings = result.linted, result.settings
        only = params.context.only
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            server.lint_pool, documents.code_actions, linted, uri, params.range, only, settings,
            params.context.diagnostics)

    return server


def serve(stdin: Optional[Any] = None, stdout: Optional[Any] = None) -> int:
    """Run the server on standard input and output until ``exit``; the exit code is 0 after a
    ``shutdown`` request (LSP's rule), 1 otherwise."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="mllint server: %(levelname)s: %(name)s: %(message)s")
    out = stdout or sys.stdout.buffer
    stream: Union[Any, None] = stdin or sys.stdin.buffer
    sys.stdout = sys.stderr  # a stray print() must not corrupt the protocol stream
    server = create_server()
    try:
        server.start_io(stream, out)
    finally:
        server.lint_pool.shutdown(wait=False, cancel_futures=True)
    return 0 if server.shutdown_requested else 1


def run() -> None:
    """``mllint server``: serve, then leave at once. The protocol stream is flushed message by
    message; skipping the interpreter's teardown (over half a second for libcst's and
    lsprotocol's modules) lets editors, which wait for the process after ``exit``, move on."""
    code = serve()
    try:
        sys.stderr.flush()
    finally:
        os._exit(code)
