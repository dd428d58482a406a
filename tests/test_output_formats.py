"""Every ``--output-format``, ``--statistics`` and the progress line, on Python files and notebooks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from clihelp import MLL101_SRC, MLL302_SRC, run, write
from mllint.output import FORMATS, renderer
from mllint.output.github import escape_data, escape_property
from mllint.output.progress import Progress
from mllint.output.text import RenderOptions
from mllint.runner import Mode, process_file
from mllint.settings import Settings

DATA = Path(__file__).resolve().parent / "data"
NOTEBOOK = nbformat.writes(new_notebook(cells=[
    new_markdown_cell("# Fine-tuning"),
    new_code_cell("%pip install trl\n" + MLL101_SRC),
])) + "\n"
# The notebook's MLL101: cell 2, row 4 of the cell; the JSON line holding that row.
NB_JSON_LINE = next(i for i, line in enumerate(NOTEBOOK.splitlines(), 1) if "pad_token = " in line)


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Results for a.py (MLL101 at 3:1), sub/b.py (MLL302 at 3:23), c.py (clean), nb.ipynb."""
    write(tmp_path, {"a.py": MLL101_SRC, "sub/b.py": MLL302_SRC, "c.py": "x = 1\n", "nb.ipynb": NOTEBOOK})
    monkeypatch.chdir(tmp_path)
    return [process_file(Path(p), Settings(), Mode()) for p in ("a.py", "c.py", "nb.ipynb", "sub/b.py")]


def render(fmt, results, unsafe=False):
    return renderer(fmt)(results, RenderOptions(unsafe_fixes=unsafe))


def test_every_format_is_registered():
    assert FORMATS == ("full", "concise", "json", "json-lines", "sarif", "github", "gitlab", "junit",
                       "grouped", "pylint")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_locates_notebook_findings(fmt, results):
    text = render(fmt, [results[2]])
    expected = {"full": "nb.ipynb:cell 2:4:1: MLL101", "concise": "nb.ipynb:cell 2:4:1: MLL101",
                "json": '"cell": 2', "json-lines": '"cell": 2', "sarif": '"cell": 2',
                "github": f"file=nb.ipynb,line={NB_JSON_LINE},endLine={NB_JSON_LINE},title=MLL101::cell 2:4:1: ",
                "gitlab": "(cell 2, line 4, column 1)", "junit": 'cell="2"', "grouped": "  cell 2:4:1 MLL101",
                "pylint": "nb.ipynb:cell 2:4: [MLL101]"}[fmt]
    assert expected in text


def test_full_format_frames_notebook_cells(results):
    text = render("full", [results[2]])
    assert "3 | tokenizer = AutoTokenizer" in text and "4 | tokenizer.pad_token = tokenizer.eos_token" in text


def test_json_lines(results):
    lines = render("json-lines", results).splitlines()
    assert [json.loads(line) for line in lines] == json.loads(render("json", results))
    assert [(json.loads(line)["code"], json.loads(line)["cell"]) for line in lines] == [
        ("MLL101", None), ("MLL101", 2), ("MLL302", None)]
    notebook = json.loads(lines[1])
    assert notebook["location"] == {"row": 4, "column": 1} and notebook["noqa_row"] == 4


def test_pylint_and_grouped(results):
    assert render("pylint", results).splitlines() == [
        f"a.py:3: [MLL101] {results[0].diagnostics[0].message}",
        f"nb.ipynb:cell 2:4: [MLL101] {results[2].diagnostics[0].message}",
        f"sub/b.py:3: [MLL302] {results[3].diagnostics[0].message}",
    ]
    grouped = render("grouped", results, unsafe=True)
    assert grouped.startswith("a.py:\n  3:1 MLL101 [*] pad token is the EOS token")
    assert "\n\nnb.ipynb:\n  cell 2:4:1 MLL101 [*] " in grouped
    assert grouped.endswith("\n\n") and "c.py" not in grouped
    assert "\n\nsub/b.py:\n  3:23 MLL302 [*] " in grouped


def test_github_escaping():
    assert escape_data("100% done\r\nnext: a,b") == "100%25 done%0D%0Anext: a,b"
    assert escape_property("dir:x,y%\n") == "dir%3Ax%2Cy%25%0A"


def test_github(results):
    lines = render("github", results).splitlines()
    assert lines[0] == f"::error file=a.py,line=3,col=1,endLine=3,endColumn=42,title=MLL101::{results[0].diagnostics[0].message}"
    assert lines[1].startswith(f"::error file=nb.ipynb,line={NB_JSON_LINE},endLine={NB_JSON_LINE},title=MLL101::cell 2:4:1: ")
    assert lines[2].startswith("::error file=sub/b.py,line=3,col=23,")
    assert len(lines) == 3


def test_github_escapes_messages_and_paths(tmp_path, monkeypatch):
    write(tmp_path, {"we,ird:dir/a.py": "x = (\n"})
    monkeypatch.chdir(tmp_path)
    result = process_file(Path("we,ird:dir/a.py"), Settings(), Mode())
    result.diagnostics[0] = result.diagnostics[0].with_changes(message="50% of\nlines")
    line = render("github", [result])
    assert line.startswith("::error file=we%2Cird%3Adir/a.py,line=1,")
    assert line.endswith("title=MLL902::50%25 of%0Alines\n") and line.count("\n") == 1


def test_gitlab(results, monkeypatch, tmp_path):
    report = json.loads(render("gitlab", results))
    assert [(r["check_name"], r["location"]["path"], r["location"]["lines"]["begin"], r["severity"])
            for r in report] == [("MLL101", "a.py", 3, "major"), ("MLL101", "nb.ipynb", NB_JSON_LINE, "major"),
                                 ("MLL302", "sub/b.py", 3, "major")]
    assert report[0]["description"].startswith("MLL101: pad token is the EOS token")
    assert len({r["fingerprint"] for r in report}) == 3
    # Relative to $CI_PROJECT_DIR when GitLab sets it.
    monkeypatch.setenv("CI_PROJECT_DIR", str(tmp_path / "sub"))
    assert json.loads(render("gitlab", [results[3]]))[0]["location"]["path"] == "b.py"


def _shifted(tmp_path, monkeypatch, source):
    """Results for one file whose source is ``source``, checked twice: as is and two lines lower."""
    monkeypatch.chdir(tmp_path)
    out = []
    for prefix in ("", "# moved\n# down\n"):
        write(tmp_path, {"t.py": prefix + source})
        out.append(process_file(Path("t.py"), Settings(), Mode()))
    return out


def test_fingerprints_survive_moves_and_tell_duplicates_apart(tmp_path, monkeypatch):
    twice = MLL302_SRC + "out = model(src, tgt, memory_mask=src_padding_mask)\n"
    before, after = _shifted(tmp_path, monkeypatch, twice)
    for fmt, get in (("gitlab", lambda r: [i["fingerprint"] for i in r]),
                     ("sarif", lambda r: [i["partialFingerprints"]["mllint/v1"] for i in r["runs"][0]["results"]])):
        first, second = get(json.loads(render(fmt, [before]))), get(json.loads(render(fmt, [after])))
        assert len(first) == 2 and first[0] != first[1]  # the same message twice: still unique
        assert first == second  # two lines lower: the same fingerprints
    assert json.loads(render("gitlab", [after]))[0]["location"]["lines"]["begin"] == 5


def test_sarif_is_valid_against_the_official_schema(results):
    schema = json.loads((DATA / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
    log = json.loads(render("sarif", results))
    jsonschema.validate(log, schema, cls=jsonschema.Draft4Validator)
    # A log with an error for an unreadable file and no rule-specific location validates too.
    empty = json.loads(render("sarif", []))
    jsonschema.validate(empty, schema, cls=jsonschema.Draft4Validator)
    assert empty["runs"][0]["results"] == []
    # The validator does reject what the schema forbids (so the check above means something).
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(log, schema, cls=jsonschema.Draft4Validator)


def test_sarif_content(results, tmp_path):
    from mllint.core.registry import default_registry

    run_ = json.loads(render("sarif", results))["runs"][0]
    rules = run_["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(default_registry().rules)
    mll101 = rules[[r["id"] for r in rules].index("MLL101")]
    assert mll101["name"] == "pad-token-is-eos" and mll101["defaultConfiguration"] == {"level": "error", "enabled": True}
    assert "## Why is this bad?" in mll101["help"]["markdown"]
    assert run_["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.as_uri() + "/"
    py, nb, sub = run_["results"]
    assert (py["ruleId"], rules[py["ruleIndex"]]["id"], py["level"]) == ("MLL101", "MLL101", "error")
    assert py["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "a.py", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 3, "startColumn": 1, "endLine": 3, "endColumn": 42}}
    assert sub["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "sub/b.py"
    assert nb["locations"][0]["physicalLocation"]["region"] == {"startLine": NB_JSON_LINE, "endLine": NB_JSON_LINE}
    assert nb["locations"][0]["properties"] == {"cell": 2, "cellRegion": {
        "startLine": 4, "startColumn": 1, "endLine": 4, "endColumn": 42}}
    assert nb["locations"][0]["message"]["text"] == "cell 2, line 4, column 1"


def test_sarif_paths_outside_the_directory_are_absolute_uris(tmp_path, monkeypatch):
    write(tmp_path, {"proj/x": "", "other/a.py": MLL101_SRC})
    monkeypatch.chdir(tmp_path / "proj")
    result = process_file(tmp_path / "other" / "a.py", Settings(), Mode())
    location = json.loads(render("sarif", [result]))["runs"][0]["results"][0]["locations"][0]
    assert location["physicalLocation"]["artifactLocation"] == {"uri": (tmp_path / "other" / "a.py").as_uri()}


def test_junit(results):
    text = render("junit", results)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(text)
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "3", "3")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["a.py", "nb.ipynb", "sub/b.py"]
    case = suites[0].find("testcase")
    assert (case.get("name"), case.get("classname"), case.get("line"), case.get("column")) == (
        "MLL101 (pad-token-is-eos)", "a", "3", "1")
    failure = case.find("failure")
    assert failure.get("type") == "MLL101" and failure.text.startswith("line 3, col 1, pad token is")
    nb_case = suites[1].find("testcase")
    assert (nb_case.get("cell"), nb_case.get("line")) == ("2", str(NB_JSON_LINE))
    assert nb_case.find("failure").text.startswith("cell 2, line 4, col 1, ")
    assert suites[2].find("testcase").get("classname") == "sub.b"
    clean = ET.fromstring(render("junit", [results[1]]))
    assert (clean.get("tests"), clean.get("failures")) == ("1", "0")
    assert clean.find("testsuite/testcase").get("name") == "No errors found"


# -- the command line ------------------------------------------------------------------------------

def test_formats_and_statistics_end_to_end(tmp_path):
    write(tmp_path, {"a.py": MLL101_SRC, "b.py": MLL302_SRC, "c.py": MLL302_SRC})
    proc = run(["--output-format", "sarif", "."], tmp_path)
    assert proc.returncode == 1 and len(json.loads(proc.stdout)["runs"][0]["results"]) == 3

    proc = run(["--statistics", "."], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == "2\tMLL302\tpadding-mask-as-memory-mask\n1\tMLL101\tpad-token-is-eos\n"
    proc = run(["--statistics", "--unsafe-fixes", "--output-format", "json", "."], tmp_path)
    assert json.loads(proc.stdout) == [
        {"code": "MLL302", "name": "padding-mask-as-memory-mask", "count": 2, "fixable": True},
        {"code": "MLL101", "name": "pad-token-is-eos", "count": 1, "fixable": True}]


def test_statistics_fix_marks():
    from mllint.output.statistics import render_statistics
    from mllint.runner import FileResult
    from mllint.core.engine import lint_source

    results = [FileResult("a.py", lint_source(MLL302_SRC + "x = (1  # noqa: MLL101\n)\n", "a.py",
                                              Settings(extend_select=("MLL901",)))),
               FileResult("b.py", lint_source(MLL302_SRC, "b.py"))]
    assert render_statistics(results, RenderOptions()) == (
        "2\tMLL302\t[ ] padding-mask-as-memory-mask\n1\tMLL901\t[*] unused-noqa\n")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_only_on_a_terminal_and_only_for_long_runs():
    now = [0.0]
    tty = _Terminal()
    progress = Progress(3, tty, delay=1.0, interval=0.1, clock=lambda: now[0])
    progress.update(1)
    assert tty.getvalue() == ""  # not long yet
    now[0] = 1.5
    progress.update(2)
    now[0] = 1.55
    progress.update(2)  # too soon to redraw
    progress.update(3)  # the last one is always drawn
    progress.finish()
    line = "mllint: checked 3/3 files"
    assert tty.getvalue() == "\rmllint: checked 2/3 files\r" + line + "\r" + " " * len(line) + "\r"
    pipe = io.StringIO()
    progress = Progress(3, pipe, delay=0.0, clock=lambda: now[0])
    progress.update(3)
    progress.finish()
    assert pipe.getvalue() == ""


def _run_with_stderr(tmp_path, stderr):
    env = {k: v for k, v in os.environ.items() if k != "MLLINT_DEBUG"}
    env["MLLINT_PROGRESS_DELAY"] = "0"  # show it at once, if it is to be shown at all
    return subprocess.run([sys.executable, "-m", "mllint", "."], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=stderr, timeout=60)


def test_progress_goes_to_a_terminal_but_never_into_a_pipe(tmp_path):
    write(tmp_path, {f"m{i}.py": "x = 1\n" for i in range(5)})
    piped = _run_with_stderr(tmp_path, subprocess.PIPE)
    assert piped.returncode == 0
    assert piped.stderr == b"All checks passed!\n" and piped.stdout == b""

    import pty

    leader, follower = pty.openpty()
    try:
        proc = _run_with_stderr(tmp_path, follower)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal is closed once the program has ended
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0 and proc.stdout == b""
    assert b"\rmllint: checked 5/5 files" in seen and seen.endswith(b"All checks passed!\r\n")
