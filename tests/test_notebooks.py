"""Jupyter notebooks: masking IPython syntax, the map back to cells, fixes written into cells
byte for byte, malformed notebooks, discovery, and the command line on ``.ipynb`` files."""

from __future__ import annotations

import json
import os
import stat

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from clihelp import MLL101_FIXED, MLL101_SRC, run, write
from mllint.core.diagnostic import Applicability, Edit, Fix, Location
from mllint.settings import Settings
from mllint.sources.notebook import (
    COMMENT_MASK, LINE_MASK, NotebookText, fix_notebook, lint_notebook, mask_cell, parse_notebook,
    read_notebook, write_notebook)
from mllint.sources.python import SourceError

UNSAFE = Settings(unsafe_fixes=True)
IMPORTS = "from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling\n"
PAD = 'tokenizer = AutoTokenizer.from_pretrained("m")\ntokenizer.pad_token = tokenizer.eos_token\n'
MODEL = 'model = AutoModelForCausalLM.from_pretrained("m")\n'
COLLATOR = "collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)\n"


def notebook_text(*cells, **metadata) -> str:
    """A notebook as nbformat writes it (indent 1, sorted keys, non-ASCII kept, final newline).
    ``cells``: code sources, or ("md", text) for markdown cells."""
    nb = new_notebook()
    nb.metadata.update(metadata or {"kernelspec": {"name": "python3", "language": "python",
                                                   "display_name": "Python 3"}})
    for cell in cells:
        if isinstance(cell, tuple):
            nb.cells.append(new_markdown_cell(cell[1]))
        else:
            nb.cells.append(new_code_cell(cell, execution_count=1, outputs=[
                new_output("stream", name="stdout", text="done ✓\n")]))
    return nbformat.writes(nb) + "\n"


def parse(text: str, path: str = "nb.ipynb"):
    return parse_notebook(text.encode("utf-8"), path)


# -- masking -------------------------------------------------------------------------------------

def test_magics_are_masked_line_for_line_and_kept_raw():
    source = ("!pip install trl==0.4.7\n%matplotlib inline\nfiles = !ls -la\nx = 1\n"
              "for f in files:\n    %time g(f)\ntokenizer?\n??model.generate\n!pip install \\\n    peft\ny = 2")
    masked, rows, magics = mask_cell(source, 3)
    lines = masked.split("\n")
    assert len(lines) == len(source.split("\n"))
    assert lines[0] == LINE_MASK and lines[1] == LINE_MASK
    assert lines[2] == "files = None  # mllint: masked"
    assert lines[3] == "x = 1" and lines[4] == "for f in files:"
    assert lines[5] == "    " + LINE_MASK  # indentation kept, so the block still parses
    assert lines[6] == LINE_MASK and lines[7] == LINE_MASK
    assert lines[8] == LINE_MASK and lines[9] == COMMENT_MASK  # a continuation line
    assert lines[10] == "y = 2"
    assert rows == {1, 2, 3, 6, 7, 8, 9, 10}
    compile(masked, "<cell>", "exec")
    assert [(m.cell, m.row, m.kind, m.text) for m in magics] == [
        (3, 1, "shell", "!pip install trl==0.4.7"),
        (3, 2, "line-magic", "%matplotlib inline"),
        (3, 3, "shell", "files = !ls -la"),
        (3, 6, "line-magic", "    %time g(f)"),
        (3, 7, "help", "tokenizer?"),
        (3, 8, "help", "??model.generate"),
        (3, 9, "shell", "!pip install \\\n    peft"),
    ]


def test_python_that_looks_like_magic_is_left_alone():
    source = ('doc = """\n%d items\n!important\nWhat?\n"""\n'
              "x = (a\n     % b)\ny = a \\\n    % b\nz = 1  # why?\n")
    masked, rows, magics = mask_cell(source, 1)
    assert masked == source and not rows and not magics


def test_cell_magics():
    masked, rows, magics = mask_cell("%%bash\necho hi\nls", 2)
    assert masked == f"{COMMENT_MASK}\n{COMMENT_MASK}\n{COMMENT_MASK}"
    assert rows == {1, 2, 3}
    assert [(m.kind, m.text) for m in magics] == [("cell-magic", "%%bash\necho hi\nls")]
    # A cell magic whose body is Python run in the kernel: only its first line is masked.
    masked, rows, magics = mask_cell("%%time\n!nvidia-smi\nx = f()\n", 2)
    assert masked == f"{COMMENT_MASK}\n{LINE_MASK}\nx = f()\n"
    assert rows == {1, 2}
    assert [m.kind for m in magics] == ["cell-magic", "shell"]


# -- the map back to cells -----------------------------------------------------------------------

def test_rows_map_back_to_cells():
    view = NotebookText([(2, "import torch\nx = 1"), (4, "%matplotlib inline\ny = 2\n"), (5, ""), (7, "z = 3\n")])
    assert view.text == "import torch\nx = 1\npass  # mllint: masked\ny = 2\n\nz = 3\n"
    assert view.to_cell(Location(1, 3)) == (2, Location(1, 3))
    assert view.to_cell(Location(2, 5)) == (2, Location(2, 5))
    assert view.to_cell(Location(4, 1)) == (4, Location(2, 1))
    assert view.to_cell(Location(5, 1)) == (5, Location(1, 1))
    assert view.to_cell(Location(6, 2)) == (7, Location(1, 2))
    assert view.to_cell(Location(7, 1)) == (7, Location(1, 6))  # the empty line at the very end
    assert view.masked_rows == {3}


def _fix(*spans):
    return Fix("f", Applicability.SAFE, tuple(Edit(s, e, "X", Location(1, 1), Location(1, 1)) for s, e in spans))


def test_fixes_across_cells_or_on_magics_are_refused():
    view = NotebookText([(1, "a = 1"), (2, "%time b\nc = 3\n"), (3, "d = 4\n")])
    # text: "a = 1\n" [0, 6) | "pass  # mllint: masked\n" [6, 29) "c = 3\n" [29, 35) | "d = 4\n" [35, 41)
    assert view.fix_applies(_fix((0, 1)))
    assert view.fix_applies(_fix((5, 5)))  # end of cell 1's last line
    assert not view.fix_applies(_fix((4, 7)))  # over the separator into cell 2
    assert not view.fix_applies(_fix((5, 6)))  # the separator belongs to no cell
    assert not view.fix_applies(_fix((0, 1), (35, 36)))  # two edits in two cells
    assert not view.fix_applies(_fix((6, 10)))  # inside the masked magic
    assert not view.fix_applies(_fix((28, 28)))  # appending to the masked line
    assert view.fix_applies(_fix((29, 30), (33, 34)))
    assert view.fix_applies(_fix((35, 35)))  # start of cell 3: an insertion there belongs to it
    sources, applied = view.apply([(29, 30, "C"), (35, 36, "D")])
    assert sources == {2: "%time b\nC = 3\n", 3: "D = 4\n"} and applied == 2


def test_names_are_shared_across_cells_and_locations_are_cell_relative():
    nb = parse(notebook_text(IMPORTS, ("md", "# text"), PAD, ("md", "more"), MODEL + COLLATOR))
    found = lint_notebook(nb, "nb.ipynb", Settings())
    assert [(d.code, d.cell, d.location, d.end_location, d.noqa_row) for d in found] == [
        ("MLL101", 3, Location(2, 1), Location(2, 42), 2)]
    assert "(cell 5, line 2)" in found[0].message  # rule messages cite cell lines, not joined rows


def test_noqa_inside_a_cell_suppresses():
    nb = parse(notebook_text(IMPORTS, PAD.replace("eos_token\n", "eos_token  # noqa: MLL101\n"), COLLATOR))
    assert lint_notebook(nb, "nb.ipynb", Settings()) == []
    nb = parse(notebook_text("# mllint: noqa\n" + IMPORTS, PAD, COLLATOR))
    assert lint_notebook(nb, "nb.ipynb", Settings()) == []


def test_fix_inside_one_cell_is_applied_and_across_cells_dropped():
    nb = parse(notebook_text("%pip install trl\n" + MLL101_SRC))
    result = fix_notebook(nb, "nb.ipynb", UNSAFE)
    assert result.sources == {1: "%pip install trl\n" + MLL101_FIXED}
    assert [d.code for d in result.applied] == ["MLL101"] and result.remaining == ()

    # The model is loaded in another cell: the fix would edit two cells, so it is dropped.
    nb = parse(notebook_text(IMPORTS + PAD, MODEL + COLLATOR))
    found = lint_notebook(nb, "nb.ipynb", UNSAFE)
    assert [(d.code, d.cell, d.fix) for d in found] == [("MLL101", 1, None)]
    result = fix_notebook(nb, "nb.ipynb", UNSAFE)
    assert result.sources == {} and result.applied == ()
    assert [(d.code, d.fix) for d in result.remaining] == [("MLL101", None)]


def test_syntax_errors_are_located_in_their_cell():
    nb = parse(notebook_text("x = 1", "y = (", "z = 2"))
    found = lint_notebook(nb, "nb.ipynb", Settings())
    assert [(d.code, d.cell, d.location.row) for d in found] == [("MLL902", 2, 1)]


# -- writing back, byte for byte -----------------------------------------------------------------

def _restyle(text: str, **dumps) -> str:
    return json.dumps(json.loads(text), **dumps) + "\n"


STYLES = {
    "nbformat": {},  # indent 1, sorted keys, ensure_ascii=False
    "indent2-ascii": {"indent": 2, "ensure_ascii": True},
    "one-line": {},
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_rendering_unchanged_sources_is_byte_identical(style):
    text = notebook_text(IMPORTS, ("md", "É"), PAD + "# é ✓", "", MODEL)
    if style == "indent2-ascii":
        text = _restyle(text, **STYLES[style])
    elif style == "one-line":
        text = json.dumps(json.loads(text), ensure_ascii=False)  # no final newline either
    nb = parse(text)
    assert nb.render(nb.sources) == text


@pytest.mark.parametrize("dumps", [dict(indent=1, sort_keys=True, ensure_ascii=False),
                                   dict(indent=2, ensure_ascii=True), dict(ensure_ascii=False)],
                         ids=["nbformat", "indent2-ascii", "one-line"])
def test_changed_sources_are_written_in_the_files_own_style(dumps):
    text = json.dumps(json.loads(notebook_text(IMPORTS, PAD + "x = 'é'", "", "y = 1\n")), **dumps) + "\n"
    nb = parse(text)
    new = {2: "tokenizer.add_special_tokens({'pad_token': '<pad>'})  # é\nx = 1", 3: "z = 2\n", 4: ""}
    expected = json.loads(text)
    for number, source in new.items():
        expected["cells"][number - 1]["source"] = [line for line in source.splitlines(True)]
    # Exactly what json.dumps would have written with the file's own settings.
    assert nb.render(new) == json.dumps(expected, **dumps) + "\n"


def test_string_sources_stay_strings():
    data = json.loads(notebook_text("x = 1\ny = 2\n"))
    data["cells"][0]["source"] = "x = 1\ny = 2\n"
    text = json.dumps(data, indent=1)
    nb = parse(text)
    assert nb.render({1: "x = 1\nz = 3\n"}) == text.replace('"x = 1\\ny = 2\\n"', '"x = 1\\nz = 3\\n"')


def test_fix_changes_only_the_source_lines_and_the_notebook_still_validates(tmp_path):
    text = notebook_text(("md", "# Fine-tuning ✓"), "!pip install trl==0.4.7\n" + MLL101_SRC, "print('ok')")
    write(tmp_path, {"nb.ipynb": text})
    os.chmod(tmp_path / "nb.ipynb", 0o640)
    proc = run(["--fix", "--unsafe-fixes", "nb.ipynb"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "Found 1 error (1 fixed, 0 remaining).\n"
    new = (tmp_path / "nb.ipynb").read_text(encoding="utf-8")
    old_lines, new_lines = text.splitlines(True), new.splitlines(True)
    # The edited lines are the source lines of the fixed statement; every other byte is kept.
    prefix = next(i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b)
    suffix = next(i for i, (a, b) in enumerate(zip(reversed(old_lines), reversed(new_lines))) if a != b)
    assert old_lines[:prefix] == new_lines[:prefix] and old_lines[-suffix:] == new_lines[-suffix:]
    assert [line.strip() for line in old_lines[prefix:-suffix]] == [
        '"tokenizer.pad_token = tokenizer.eos_token\\n",',
        '"model = AutoModelForCausalLM.from_pretrained(\\"m\\")\\n",']
    assert [line.strip() for line in new_lines[prefix:-suffix]] == [
        '"tokenizer.add_special_tokens({\\"pad_token\\": \\"<pad>\\"})\\n",',
        '"model = AutoModelForCausalLM.from_pretrained(\\"m\\")\\n",',
        '"model.resize_token_embeddings(len(tokenizer))\\n",']
    assert old_lines[prefix][:old_lines[prefix].index('"')] == new_lines[prefix + 2][:new_lines[prefix + 2].index('"')]
    nb = nbformat.reads(new, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[1].outputs == nbformat.reads(text, as_version=4).cells[1].outputs
    assert "".join(nb.cells[1].source).startswith("!pip install trl==0.4.7\n")
    assert stat.S_IMODE(os.stat(tmp_path / "nb.ipynb").st_mode) == 0o640
    assert run(["--fix", "--unsafe-fixes", "nb.ipynb"], tmp_path).stderr == "All checks passed!\n"


def test_write_refuses_a_notebook_changed_since_it_was_read(tmp_path):
    path = tmp_path / "nb.ipynb"
    path.write_text(notebook_text("x = 1\n"), encoding="utf-8")
    nb = read_notebook(str(path))
    path.write_text(notebook_text("x = 2\n"), encoding="utf-8")
    with pytest.raises(SourceError) as info:
        write_notebook(nb, nb.render({1: "x = 3\n"}))
    assert info.value.code == "MLL904"
    assert json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"] == ["x = 2\n"]


# -- malformed notebooks -------------------------------------------------------------------------

@pytest.mark.parametrize("raw, code, fragment", [
    (b'{"cells": [', "MLL905", "invalid JSON at line 1, column 12"),
    (b"[]", "MLL905", "not an object"),
    (b'{"nbformat": 3, "cells": []}', "MLL905", "nbformat 3"),
    (b'{"nbformat": 4, "metadata": {}}', "MLL905", "`cells` is missing"),
    (b'{"nbformat": 4, "cells": [1]}', "MLL905", "cell 1 is not an object"),
    (b'{"nbformat": 4, "cells": [{"cell_type": "code", "source": ["a", 1]}]}', "MLL905",
     "the source of cell 1 is neither a string nor a list of strings"),
    (b'\xff{"nbformat": 4}', "MLL903", "cannot decode the notebook as utf-8"),
])
def test_malformed_notebooks(raw, code, fragment):
    with pytest.raises(SourceError) as info:
        parse_notebook(raw, "x.ipynb")
    assert info.value.code == code and fragment in info.value.message


def test_malformed_notebooks_do_not_stop_the_run(tmp_path):
    write(tmp_path, {"a.ipynb": b'{"cells": [', "b.ipynb": b'{"nbformat": 3}', "c.py": MLL101_SRC,
                     "d.ipynb": notebook_text(MLL101_SRC)})
    proc = run(["--output-format", "json", "."], tmp_path)
    assert proc.returncode == 1
    found = [(os.path.basename(d["filename"]), d["code"], d["cell"], d["location"]["row"])
             for d in json.loads(proc.stdout)]
    assert found == [("a.ipynb", "MLL905", None, 1), ("b.ipynb", "MLL905", None, 1),
                     ("c.py", "MLL101", None, 3), ("d.ipynb", "MLL101", 1, 3)]


def test_other_languages_are_skipped():
    nb = parse(notebook_text("x <- c(1, 2)", kernelspec={"name": "ir", "language": "R", "display_name": "R"}))
    assert not nb.python


# -- the command line ------------------------------------------------------------------------------

def test_discovery_check_diff_and_stdin(tmp_path):
    text = notebook_text(("md", "# title"), MLL101_SRC)
    write(tmp_path, {"nb.ipynb": text, ".ipynb_checkpoints/nb-checkpoint.ipynb": text,
                     "old/x.ipynb": text, "pyproject.toml": '[tool.mllint]\nextend-exclude = ["old/"]\n'})
    proc = run(["."], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("nb.ipynb:cell 2:3:1: MLL101 pad token is the EOS token")
    assert proc.stdout.count("\n") == 1  # checkpoints and excluded directories are skipped

    proc = run(["--diff", "--unsafe-fixes", "nb.ipynb"], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("--- a/nb.ipynb:cell 2\n+++ b/nb.ipynb:cell 2\n@@ -1,5 +1,6 @@\n")
    assert "+model.resize_token_embeddings(len(tokenizer))\n" in proc.stdout
    assert (tmp_path / "nb.ipynb").read_text(encoding="utf-8") == text

    proc = run(["-", "--stdin-filename", "nb.ipynb", "--fix", "--unsafe-fixes"], tmp_path, input=text)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["cells"][1]["source"] == MLL101_FIXED.splitlines(True)


def test_add_noqa_writes_into_cells(tmp_path):
    write(tmp_path, {"nb.ipynb": notebook_text(IMPORTS, "%env X=1\n" + PAD, COLLATOR)})
    proc = run(["--add-noqa", "nb.ipynb"], tmp_path)
    assert proc.returncode == 0 and proc.stderr == "Added 1 noqa directive.\n"
    data = json.loads((tmp_path / "nb.ipynb").read_text(encoding="utf-8"))
    assert data["cells"][1]["source"][0] == "%env X=1\n"
    assert data["cells"][1]["source"][2] == "tokenizer.pad_token = tokenizer.eos_token  # noqa: MLL101\n"
    assert run(["nb.ipynb"], tmp_path).returncode == 0


def test_a_bug_in_the_notebook_adapter_is_contained(tmp_path, monkeypatch):
    from pathlib import Path

    from mllint import runner

    def broken(*args, **kwargs):
        raise IndexError("boom")

    write(tmp_path, {"nb.ipynb": notebook_text("x = 1\n")})
    monkeypatch.setattr(runner, "lint_notebook", broken)
    monkeypatch.delenv("MLLINT_DEBUG", raising=False)
    result = runner.process_file(Path(tmp_path / "nb.ipynb"), Settings(), runner.Mode())
    assert [(d.code, d.cell) for d in result.diagnostics] == [("MLL999", None)]
    assert "IndexError: boom" in result.diagnostics[0].message


def test_automagic_lines_are_ipython_not_syntax_errors():
    """IPython runs `pip install x` or `time f()` as magics (automagic is on by default); lines
    that are valid Python (`time = 3`, `ls -la`) stay Python."""
    from mllint.sources.notebook import mask_cell

    text, rows, magics = mask_cell("pip install diffusers torch\ntime = 3\nenv.step(a)\n"
                                   "for x in y:\n    time f(x)\nmatplotlib inline\n", 1)
    assert sorted(rows) == [1, 5, 6]
    assert [m.text for m in magics] == ["pip install diffusers torch", "    time f(x)", "matplotlib inline"]
    compile(text, "cell", "exec")
