"""``mllint server``: the pure LSP conversions, and the real server driven over JSON-RPC.

The end-to-end tests start ``python -m mllint server`` as a subprocess and frame JSON-RPC
(``Content-Length`` headers) themselves; every read has a timeout, so a hung server fails the
test instead of hanging the run.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

pytest.importorskip("pygls")
lsp = pytest.importorskip("lsprotocol.types")

from mllint import lint_source  # noqa: E402
from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Location, Severity  # noqa: E402
from mllint.docs_url import DOCS_BASE, rule_url  # noqa: E402
from mllint.server import convert, documents  # noqa: E402
from mllint.server.convert import TextIndex  # noqa: E402
from mllint.server.documents import Cell  # noqa: E402
from mllint.settings import Settings  # noqa: E402

TIMEOUT = 15.0  # seconds for any one message; the whole exchange takes about one

# MLL202: a padded batch passed to generate() without its attention mask; the fix is SAFE.
BUGGY = """\
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("gpt2", padding_side="left")
model = AutoModelForCausalLM.from_pretrained("gpt2")
batch = tokenizer(["a", "b"], padding=True, return_tensors="pt")
out = model.generate(batch["input_ids"], max_new_tokens=8)
"""
FINDING_LINE = 5  # 0-based line of the generate() call
CALL = 'model.generate(batch["input_ids"], max_new_tokens=8)'

# MLL101 (unsafe fix): pad = EOS with a value-masking collator.
MLL101_SRC = """\
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling
tokenizer = AutoTokenizer.from_pretrained("m")
tokenizer.pad_token = tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained("m")
collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
"""


def codes(text: str, path: str = "train.py") -> List[str]:
    return [d.code for d in lint_source(text, path, Settings())]


def apply_edits(text: str, edits: List[Dict[str, Any]], encoding: str = "utf-16") -> str:
    """Apply LSP text edits (JSON) to ``text``, as a client would."""
    index = TextIndex(text, encoding)
    spans = []
    for edit in edits:
        start = index.offset(lsp.Position(**edit["range"]["start"]))
        end = index.offset(lsp.Position(**edit["range"]["end"]))
        spans.append((start, end, edit["newText"]))
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


# -- rule_url ---------------------------------------------------------------------------------------

def test_rule_url():
    assert DOCS_BASE == "https://mllint.readthedocs.io/en/latest/rules/"
    assert rule_url("MLL101") == "https://mllint.readthedocs.io/en/latest/rules/MLL101/"


# -- positions ----------------------------------------------------------------------------------------

def test_code_units_per_encoding():
    text = 'x = "é😀"'  # é: 1 UTF-16 unit, 2 UTF-8 bytes; 😀: 2 UTF-16 units, 4 UTF-8 bytes
    assert convert.code_units(text, "utf-32") == 8
    assert convert.code_units(text, "utf-16") == 9
    assert convert.code_units(text, "utf-8") == 12
    assert convert.code_units(text, "latin-1") == 9  # unknown encodings: LSP's default, UTF-16


@pytest.mark.parametrize("encoding, columns", [
    ("utf-16", [0, 4, 5, 6, 8, 9]),
    ("utf-8", [0, 4, 5, 7, 11, 12]),
    ("utf-32", [0, 4, 5, 6, 7, 8]),
])
def test_positions_on_a_non_ascii_line(encoding, columns):
    text = 'x = "é😀"\nnext\n'
    index = TextIndex(text, encoding)
    for char_index, units in zip([0, 4, 5, 6, 7, 8], columns):
        position = index.position(Location(1, char_index + 1))
        assert (position.line, position.character) == (0, units)
        assert index.offset(position) == char_index  # and back
    assert index.position(Location(2, 1)) == lsp.Position(line=1, character=0)


def test_client_positions_inside_a_character_or_past_the_line():
    index = TextIndex('"😀"\nab', "utf-16")
    assert index.offset(lsp.Position(line=0, character=2)) == 1  # the middle of the surrogate pair
    assert index.offset(lsp.Position(line=0, character=99)) == 3  # past the end: the end of the line
    assert index.offset(lsp.Position(line=7, character=0)) == len(index.text)
    utf8 = TextIndex("é", "utf-8")
    assert utf8.offset(lsp.Position(line=0, character=1)) == 0  # inside é's two bytes


def test_positions_with_crlf_and_lone_cr():
    text = "a = 1\r\nbé = 2\rc = 3"
    index = TextIndex(text, "utf-16")
    assert index.position_at(text.index("c")) == lsp.Position(line=2, character=0)
    assert index.position_at(text.index("=", 7)) == lsp.Position(line=1, character=3)
    assert index.position(Location(5, 1)) == index.position_at(len(text))  # beyond the text: its end


def test_diagnostic_conversion():
    diag = Diagnostic(code="MLL202", name="generate-without-attention-mask", message="no mask",
                      severity=Severity.ERROR, location=Location(2, 6), end_location=Location(2, 8),
                      help="pass it")
    result = convert.to_lsp_diagnostic(diag, TextIndex("é\nx = 'é😀'\n", "utf-16"))
    assert result.code == "MLL202"
    assert result.source == "mllint"
    assert result.severity == lsp.DiagnosticSeverity.Error
    assert result.code_description.href == rule_url("MLL202")
    assert result.message == "no mask\nhelp: pass it"
    assert (result.range.start.character, result.range.end.character) == (5, 8)  # after é, after 😀
    assert convert.severity(Severity.WARNING) == lsp.DiagnosticSeverity.Warning
    assert convert.severity(Severity.INFO) == lsp.DiagnosticSeverity.Information
    unused = convert.to_lsp_diagnostic(diag.with_changes(code="MLL901", url="https://x/"), TextIndex("\nx\n"))
    assert unused.tags == [lsp.DiagnosticTag.Unnecessary]
    assert unused.code_description.href == "https://x/"  # the diagnostic's own URL wins
    pack = convert.to_lsp_diagnostic(diag.with_changes(code="ACME1"), TextIndex("\nx\n"))
    assert pack.code == "ACME1" and pack.code_description is None  # a pack rule without a page


@pytest.mark.parametrize("old, new", [
    ("abc\n", "abXc\n"), ("abc", "abc\nd"), ("a\r\nb\r\n", "a\r\nX\r\nb\r\n"), ("a\r\nb", "a\nb"),
    ("x = 'é'\n", "x = 'é😀'\n"), ("same", "same"), ("", "new"), ("old", ""),
])
def test_minimal_edit(old, new):
    index = TextIndex(old, "utf-16")
    edit = convert.minimal_edit(old, new, index)
    if old == new:
        assert edit is None
        return
    as_json = {"range": {"start": {"line": edit.range.start.line, "character": edit.range.start.character},
                         "end": {"line": edit.range.end.line, "character": edit.range.end.character}},
               "newText": edit.new_text}
    assert apply_edits(old, [as_json]) == new
    for position in (edit.range.start, edit.range.end):  # never between "\r" and "\n"
        offset = index.offset(position)
        assert not (0 < offset < len(old) and old[offset - 1] == "\r" and old[offset] == "\n")


def test_kind_wanted_is_hierarchical():
    assert convert.kind_wanted(convert.FIX_ALL_KIND, None)
    assert convert.kind_wanted(convert.FIX_ALL_KIND, ["source"])
    assert convert.kind_wanted(convert.FIX_ALL_KIND, ["source.fixAll"])
    assert convert.kind_wanted(convert.FIX_ALL_KIND, [lsp.CodeActionKind.SourceFixAll])
    assert not convert.kind_wanted(convert.FIX_ALL_KIND, ["quickfix"])
    assert not convert.kind_wanted(convert.QUICKFIX_KIND, ["source.fixAll"])


# -- documents: lint results and code actions (no server) ------------------------------------------

def _actions(linted, uri, line, only=None, character=None, context=()):
    """The code actions for a cursor on ``line`` (inside the finding there, by default)."""
    if character is None:
        character = next((f.lsp_diagnostic.range.start.character for f in linted.findings
                          if f.uri == uri and f.lsp_diagnostic.range.start.line == line), 0)
    cursor = lsp.Position(line=line, character=character)
    return documents.code_actions(linted, uri, lsp.Range(start=cursor, end=cursor), only, Settings(), context)


def _apply_action(action, uri, text):
    edits = [{"range": {"start": {"line": e.range.start.line, "character": e.range.start.character},
                        "end": {"line": e.range.end.line, "character": e.range.end.character}},
              "newText": e.new_text} for e in action.edit.changes[uri]]
    return apply_edits(text, edits)


def test_code_actions_for_a_python_document():
    uri = "file:///p/train.py"
    linted = documents.lint_text(uri, BUGGY, "/p/train.py", Settings(), "utf-16")
    [published] = linted.diagnostics()[uri]
    assert published.code == "MLL202"
    actions = _actions(linted, uri, FINDING_LINE)
    titles = [a.title for a in actions]
    assert titles[0].startswith("Fix MLL202: ") and "(unsafe)" not in titles[0]
    assert titles[1:] == ["Disable MLL202 for this line (# noqa)", "mllint: fix all safe"]
    assert actions[0].kind == lsp.CodeActionKind.QuickFix and actions[0].is_preferred
    assert actions[2].kind == convert.FIX_ALL_KIND
    for action in actions:
        assert "MLL202" not in codes(_apply_action(action, uri, BUGGY))
    assert _apply_action(actions[1], uri, BUGGY).splitlines()[FINDING_LINE].endswith(CALL + "  # noqa: MLL202")
    assert _actions(linted, uri, 0) == [actions[2]]  # elsewhere: only "fix all"
    assert _actions(linted, uri, FINDING_LINE, character=0) == [actions[2]]
    # a cursor outside the range, but the client names the diagnostic (as Neovim does):
    assert _actions(linted, uri, FINDING_LINE, character=0, context=[published]) == actions
    assert [a.title for a in _actions(linted, uri, FINDING_LINE, only=["source.fixAll"])] == ["mllint: fix all safe"]
    assert [a.kind for a in _actions(linted, uri, FINDING_LINE, only=["quickfix"])] == ["quickfix", "quickfix"]


def test_unsafe_fix_is_labelled_and_not_in_fix_all():
    uri = "file:///p/a.py"
    linted = documents.lint_text(uri, MLL101_SRC, "/p/a.py", Settings(), "utf-16")
    [finding] = linted.findings
    assert finding.raw.fix is not None and finding.raw.fix.applicability is Applicability.UNSAFE
    actions = _actions(linted, uri, 2)
    assert [a.title for a in actions] == [f"Fix MLL101: {finding.raw.fix.message} (unsafe)",
                                          "Disable MLL101 for this line (# noqa)"]
    assert not actions[0].is_preferred


def test_display_only_fixes_are_not_offered_and_noqa_merges():
    text = "x = 1  # noqa: MLL301\n"
    uri = "file:///p/x.py"
    fix = Fix("do it by hand", Applicability.DISPLAY_ONLY, (Edit(0, 1, "y", Location(1, 1), Location(1, 2)),))
    diag = Diagnostic("MLL202", "n", "m", Severity.WARNING, Location(1, 1), Location(1, 2), fix=fix, noqa_row=1)
    linted = documents.Linted("/p/x.py", "utf-16", (uri,), {uri: text})
    index = TextIndex(text)
    linted.findings.append(documents.Finding(uri, diag, diag, convert.to_lsp_diagnostic(diag, index)))
    actions = _actions(linted, uri, 0)
    assert [a.title for a in actions] == ["Disable MLL202 for this line (# noqa)"]
    assert _apply_action(actions[0], uri, text) == "x = 1  # noqa: MLL301, MLL202\n"


def test_notebook_cells_are_linted_together_and_mapped_back():
    first, second = BUGGY.split("batch = ")
    cells = [Cell(2, "cell:2", first), Cell(3, "cell:3", "%matplotlib inline\nbatch = " + second)]
    linted = documents.lint_cells(cells, "/p/nb.ipynb", Settings(), "utf-16")
    published = linted.diagnostics()
    assert published["cell:2"] == []
    [diag] = published["cell:3"]
    assert diag.code == "MLL202" and diag.range.start.line == 2  # the cell's row, after the magic
    actions = _actions(linted, "cell:3", 2)
    assert actions and all(list(a.edit.changes) == ["cell:3"] for a in actions)
    fixed = _apply_action(actions[0], "cell:3", cells[1].text)
    assert fixed.startswith("%matplotlib inline\n") and "attention_mask=" in fixed
    noqa = _apply_action(actions[1], "cell:3", cells[1].text)
    assert noqa.splitlines()[2].endswith("  # noqa: MLL202")


# -- the CLI without pygls --------------------------------------------------------------------------

def test_server_without_pygls_is_a_one_line_error_and_import_stays_light(tmp_path):
    code = ("import sys; sys.modules['pygls'] = None; import mllint, mllint.cli; "
            "assert not [m for m, v in sys.modules.items() if v and m.split('.')[0] in ('pygls', 'lsprotocol')]; "
            "sys.argv = ['mllint', 'server']; mllint.cli.main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("mllint: error: ")
    assert "pip install 'mllint-ml[server]'" in proc.stderr


# -- end to end: JSON-RPC over the server's stdin/stdout ----------------------------------------------

class Client:
    """A minimal LSP client: frames messages, reads them on a thread, answers server requests."""

    registration: Dict[str, Any]
    root: Path

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mllint", "server"], cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
        self.backlog: List[Dict[str, Any]] = []
        self.ids = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        try:
            while True:
                length = None
                while True:
                    line = stream.readline()
                    if not line:
                        return
                    if not line.strip():
                        break
                    name, _, value = line.decode("ascii").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                assert length is not None, "a message without Content-Length"
                self.messages.put(json.loads(stream.read(length).decode("utf-8")))
        finally:
            self.messages.put(None)

    def send(self, message: Dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self.ids += 1
        self.send({"id": self.ids, "method": method, "params": params})
        wanted = self.ids
        reply = self.wait(lambda m: m.get("id") == wanted and "method" not in m)
        assert "error" not in reply, reply
        return reply["result"]

    def wait(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = TIMEOUT) -> Dict[str, Any]:
        for i, message in enumerate(self.backlog):
            if predicate(message):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no expected message within {timeout}s; got {self.backlog}")
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if message is None:
                raise AssertionError(f"the server closed its output; stderr: {self.stderr()}")
            if "method" in message and "id" in message:  # a request to the client: accept it
                self.send({"id": message["id"], "result": None})
            if predicate(message):
                return message
            self.backlog.append(message)

    def diagnostics(self, uri: str, version: Optional[int] = None, nonempty: bool = False) -> List[Dict[str, Any]]:
        message = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                            and m["params"]["uri"] == uri
                            and (version is None or m["params"].get("version") == version)
                            and (not nonempty or bool(m["params"]["diagnostics"])))
        return message["params"]["diagnostics"]

    def initialize(self, root: Path, capabilities: Optional[Dict[str, Any]] = None,
                   options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        result = self.request("initialize", {
            "processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": capabilities or {},
            "initializationOptions": {"debounce": 0.05, **(options or {})}})
        self.notify("initialized", {})
        return result

    def close(self) -> int:
        assert self.request("shutdown", None) is None
        self.notify("exit", None)
        try:
            return self.proc.wait(timeout=TIMEOUT)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)

    def stderr(self) -> str:
        self.kill()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode("utf-8", "replace")


@pytest.fixture
def client(tmp_path):
    c = Client(tmp_path)
    yield c
    c.kill()


def open_document(client: Client, path: Path, text: str, version: int = 1) -> str:
    path.write_text(text, encoding="utf-8")
    uri = path.as_uri()
    client.notify("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "python", "version": version, "text": text}})
    return uri


def test_end_to_end_diagnostics_code_action_change_and_exit(client, tmp_path):
    result = client.initialize(tmp_path, {"general": {"positionEncodings": ["utf-16"]},
                                          "textDocument": {"publishDiagnostics": {"versionSupport": True}}})
    capabilities = result["capabilities"]
    assert capabilities["positionEncoding"] == "utf-16"
    assert set(capabilities["codeActionProvider"]["codeActionKinds"]) == {"quickfix", "source.fixAll.mllint"}
    assert result["serverInfo"]["name"] == "mllint"

    uri = open_document(client, tmp_path / "train.py", BUGGY)
    [diag] = client.diagnostics(uri, version=1)
    column = BUGGY.splitlines()[FINDING_LINE].index(CALL)
    assert diag["code"] == "MLL202"
    assert diag["source"] == "mllint"
    assert diag["range"] == {"start": {"line": FINDING_LINE, "character": column},
                             "end": {"line": FINDING_LINE, "character": column + len(CALL)}}
    assert diag["codeDescription"]["href"] == rule_url("MLL202")
    assert diag["severity"] in (1, 2, 3)

    actions = client.request("textDocument/codeAction", {
        "textDocument": {"uri": uri}, "range": diag["range"], "context": {"diagnostics": [diag]}})
    by_title = {a["title"]: a for a in actions}
    [fix_title] = [t for t in by_title if t.startswith("Fix MLL202: ")]
    fix = by_title[fix_title]
    assert fix["kind"] == "quickfix" and fix["isPreferred"] is True
    fixed = apply_edits(BUGGY, fix["edit"]["changes"][uri])
    assert fixed != BUGGY and "MLL202" not in codes(fixed)
    assert "Disable MLL202 for this line (# noqa)" in by_title
    fix_all = by_title["mllint: fix all safe"]
    assert fix_all["kind"] == "source.fixAll.mllint"
    assert codes(apply_edits(BUGGY, fix_all["edit"]["changes"][uri])) == []

    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                             "contentChanges": [{"text": fixed}]})
    assert client.diagnostics(uri, version=2) == []
    assert client.close() == 0


def test_utf8_position_encoding_incremental_changes_and_exit_without_shutdown(client, tmp_path):
    result = client.initialize(tmp_path, {"general": {"positionEncodings": ["utf-8", "utf-16"]}})
    assert result["capabilities"]["positionEncoding"] == "utf-8"
    text = BUGGY.replace("out = model", 'π = "😀"; out = model')
    uri = open_document(client, tmp_path / "train.py", text)
    [diag] = client.diagnostics(uri)
    line = text.splitlines()[FINDING_LINE]
    column = len(line[:line.index(CALL)].encode("utf-8"))
    assert diag["range"]["start"] == {"line": FINDING_LINE, "character": column}
    assert diag["range"]["end"] == {"line": FINDING_LINE, "character": column + len(CALL)}
    actions = client.request("textDocument/codeAction", {
        "textDocument": {"uri": uri}, "range": diag["range"], "context": {"diagnostics": [diag], "only": ["quickfix"]}})
    fix = next(a for a in actions if a["title"].startswith("Fix MLL202"))
    edit = fix["edit"]["changes"][uri][0]
    # An incremental change, in UTF-8 columns, exactly as the client applies the edit:
    client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": edit["range"], "text": edit["newText"]}]})
    assert client.diagnostics(uri, version=2) == []
    client.notify("exit", None)  # without shutdown first: LSP's exit status 1
    assert client.proc.wait(timeout=TIMEOUT) == 1


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests below (each works in its own directory): a client that supports
    notebook documents and lets the server register file watchers. Starting a server costs about
    a second (Python, libcst, lsprotocol and the rules), so they share one."""
    root = tmp_path_factory.mktemp("shared")
    c = Client(root)
    try:
        c.initialize(root, {"workspace": {"didChangeWatchedFiles": {"dynamicRegistration": True}},
                            "notebookDocument": {"synchronization": {}}}, {"debounce": DEBOUNCE})
        c.registration = c.wait(lambda m: m.get("method") == "client/registerCapability")
        c.root = root
        yield c
        assert c.close() == 0
    finally:
        c.kill()


DEBOUNCE = 0.3  # the shared server's


def directory(shared: Client, name: str) -> Path:
    path = shared.root / name
    path.mkdir()
    return path


def test_configuration_is_read_and_reloaded(shared):
    watchers = shared.registration["params"]["registrations"][0]["registerOptions"]["watchers"]
    globs = {w["globPattern"] for w in watchers}
    assert {"**/pyproject.toml", "**/mllint.toml", "**/.mllint.toml"} <= globs

    project = directory(shared, "watched")
    config = project / "pyproject.toml"
    config.write_text('[tool.mllint]\nignore = ["MLL202"]\n', encoding="utf-8")
    uri = open_document(shared, project / "train.py", BUGGY)
    assert shared.diagnostics(uri) == []  # the CLI's configuration

    def changed() -> None:
        shared.notify("workspace/didChangeWatchedFiles", {"changes": [{"uri": config.as_uri(), "type": 2}]})

    config.write_text("[tool.mllint]\nignore = [\n", encoding="utf-8")  # broken
    changed()
    message = shared.wait(lambda m: m.get("method") == "window/showMessage")
    assert message["params"]["type"] == 1 and "pyproject.toml" in message["params"]["message"]
    assert shared.diagnostics(uri) == []  # no findings under a broken configuration, no crash

    config.write_text("[tool.mllint]\n", encoding="utf-8")
    changed()
    [diag] = shared.diagnostics(uri, nonempty=True)
    assert diag["code"] == "MLL202"


def test_config_change_noticed_without_file_watching(shared):
    project = directory(shared, "unwatched")
    uri = open_document(shared, project / "train.py", BUGGY)
    assert [d["code"] for d in shared.diagnostics(uri, version=1)] == ["MLL202"]
    (project / "mllint.toml").write_text('ignore = ["MLL2"]\n', encoding="utf-8")
    shared.notify("textDocument/didSave", {"textDocument": {"uri": uri}})  # no watcher told us
    assert shared.diagnostics(uri) == []


def test_changes_are_debounced(shared):
    project = directory(shared, "debounced")
    uri = open_document(shared, project / "train.py", BUGGY)
    assert len(shared.diagnostics(uri, version=1)) == 1  # opening is checked at once
    fixed = BUGGY.replace(CALL, CALL.replace(")", ", attention_mask=batch.attention_mask)"))
    started = time.monotonic()
    for version in range(2, 7):  # typing: five changes in a row, the last one fixes the bug
        text = BUGGY if version < 6 else fixed
        shared.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                 "contentChanges": [{"text": text}]})
    assert shared.diagnostics(uri) == []  # the first diagnostics after the burst: the last version's
    assert time.monotonic() - started >= DEBOUNCE
    assert not [m for m in shared.backlog if m.get("method") == "textDocument/publishDiagnostics"
                and m["params"]["uri"] == uri]  # no lint for the versions in between


def test_initialization_options_and_config_file_names():
    from mllint.server.server import MllintServer, is_config_uri

    server = MllintServer()
    assert server.configure({"debounce": 1, "isolated": True, "config": "cfg/mllint.toml"}, "/root") == []
    assert (server.debounce, server.isolated, server.config_file) == (1.0, True, Path("/root/cfg/mllint.toml"))
    problems = server.configure({"debounce": -1, "isolated": "yes", "config": 3}, None)
    assert len(problems) == 3 and server.debounce == 1.0
    for name in ("pyproject.toml", "mllint.toml", ".mllint.toml", "setup.cfg", "requirements-dev.txt",
                 "requirements/base.txt", "constraints.txt"):
        assert is_config_uri(f"file:///p/{name}")
    assert not is_config_uri("file:///p/train.py") and not is_config_uri("file:///p/notes.txt")


def test_notebook_documents(shared):
    project = directory(shared, "notebooks")
    first, second = BUGGY.split("batch = ")
    notebook = (project / "eval.ipynb").as_uri()
    cells = [("md", 1, "# Evaluation"), ("c1", 2, first), ("c2", 2, "%time\nbatch = " + second)]
    cell_uri = {name: f"vscode-notebook-cell:{project / 'eval.ipynb'}#{name}" for name, _, _ in cells}
    shared.notify("notebookDocument/didOpen", {
        "notebookDocument": {"uri": notebook, "notebookType": "jupyter-notebook", "version": 1,
                             "cells": [{"kind": kind, "document": cell_uri[name]} for name, kind, _ in cells]},
        "cellTextDocuments": [{"uri": cell_uri[name], "languageId": "markdown" if kind == 1 else "python",
                               "version": 1, "text": text} for name, kind, text in cells]})
    assert shared.diagnostics(cell_uri["c1"]) == []
    [diag] = shared.diagnostics(cell_uri["c2"])
    assert diag["code"] == "MLL202" and diag["range"]["start"]["line"] == 2  # row 3 of cell 3

    actions = shared.request("textDocument/codeAction", {
        "textDocument": {"uri": cell_uri["c2"]}, "range": diag["range"], "context": {"diagnostics": [diag]}})
    fix = next(a for a in actions if a["title"].startswith("Fix MLL202"))
    fixed = apply_edits(cells[2][2], fix["edit"]["changes"][cell_uri["c2"]])
    assert fixed.startswith("%time\n") and "attention_mask=" in fixed

    shared.notify("notebookDocument/didChange", {
        "notebookDocument": {"uri": notebook, "version": 2},
        "change": {"cells": {"textContent": [{"document": {"uri": cell_uri["c2"], "version": 2},
                                              "changes": [{"text": fixed}]}]}}})
    assert shared.diagnostics(cell_uri["c2"]) == []
    shared.notify("notebookDocument/didClose", {"notebookDocument": {"uri": notebook},
                                                "cellTextDocuments": [{"uri": u} for u in cell_uri.values()]})
