"""End to end: the real ``mllint`` command, its options, output formats, fixes and exit codes."""

from __future__ import annotations

import json
import os
import stat

import pytest

import mllint
from clihelp import (
    CLEAN_SRC, MLL101_FIXED, MLL101_SRC, MLL302_FIXED, MLL302_SRC, MLL901_FIXED, MLL901_SRC,
    assert_usage_error, codes_by_path, findings, run, write,
)

MLL101_LINE = ("a.py:3:1: MLL101 pad token is the EOS token, and `DataCollatorForLanguageModeling(mlm=False)` "
               "(line 5) sets every label equal to `pad_token_id` to -100: the EOS labels are masked too, "
               "so the model never learns to stop")
MLL302_MESSAGE = "`src_padding_mask` is a key-padding mask (its name `src_padding_mask` says so)"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A read-only project: a.py (MLL101), b.py (MLL302), c.py (MLL901 when enabled), d.py clean."""
    root = tmp_path_factory.mktemp("project")
    write(root, {"a.py": MLL101_SRC, "b.py": MLL302_SRC, "c.py": MLL901_SRC, "d.py": CLEAN_SRC})
    return root


# -- the command ---------------------------------------------------------------------------------

def test_version(tmp_path):
    proc = run(["--version"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == f"mllint {mllint.__version__}\n"
    assert proc.stderr == ""


def test_help(tmp_path):
    proc = run(["--help"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: mllint ")
    assert "check" in proc.stdout and "rule" in proc.stdout
    proc = run(["check", "--help"], tmp_path)
    assert proc.returncode == 0
    for option in ("--fix", "--unsafe-fixes", "--diff", "--select", "--output-format", "--stdin-filename"):
        assert option in proc.stdout


def test_check_is_the_default_command_and_dot_the_default_path(project):
    implicit = run(["a.py"], project)
    explicit = run(["check", "a.py"], project)
    assert implicit.returncode == explicit.returncode == 1
    assert implicit.stdout == explicit.stdout == MLL101_LINE + "\n"
    assert implicit.stderr == explicit.stderr

    everything = run(["check", "."], project)
    assert everything.returncode == 1
    assert codes_by_path(everything.stdout) == [("a.py", "MLL101"), ("b.py", "MLL302")]
    assert everything.stderr.startswith("Found 2 errors.\n")
    assert run([], project).stdout == everything.stdout
    assert run(["check"], project).stdout == everything.stdout


def test_clean_file_exits_0(project):
    proc = run(["d.py"], project)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr == "All checks passed!\n"


def test_findings_exit_1_with_summary(project):
    proc = run(["b.py"], project)
    assert proc.returncode == 1
    assert findings(proc.stdout) == [("b.py", 3, 23, "MLL302")]
    assert proc.stderr == ("Found 1 error.\n"
                           "No fixes available (1 hidden fix can be enabled with the `--unsafe-fixes` option).\n")


def test_quiet_prints_findings_only(project):
    proc = run(["-q", "a.py"], project)
    assert proc.returncode == 1
    assert proc.stdout == MLL101_LINE + "\n"
    assert proc.stderr == ""


@pytest.mark.parametrize("args, fragments", [
    (["--select", "XYZ1"], ["unknown rule selector `XYZ1`", "--select"]),
    (["--extend-select", "MLL1,NOPE9"], ["`NOPE9`", "--extend-select"]),
    (["--ignore", "MLL777"], ["`MLL777`", "--ignore"]),
    (["missing.py"], ["`missing.py` does not exist"]),
    (["a.py", "no/such/dir"], ["`no/such/dir` does not exist"]),
    (["--config", "nope.toml"], ["`nope.toml` does not exist"]),
    (["--target-version", "trl"], ["PACKAGE=VERSION", "`trl`"]),
    (["--target-version", "trl=banana"], ["invalid version `banana`"]),
    (["-", "a.py"], ["`-`"]),
    (["--output-format", "xml"], []),
], ids=["select", "extend-select", "ignore", "missing-file", "missing-dir", "missing-config",
        "target-version-syntax", "target-version-value", "stdin-and-path", "bad-format"])
def test_usage_errors_exit_2(project, args, fragments):
    proc = run(args, project)
    if args[0] == "--output-format":  # click's own usage error
        assert proc.returncode == 2 and proc.stdout == ""
        assert "xml" in proc.stderr
        return
    assert_usage_error(proc, *fragments)


def test_output_file_that_cannot_be_written_exits_2(project):
    proc = run(["-o", "no/such/dir/report.txt", "a.py"], project)
    assert_usage_error(proc, "no/such/dir/report.txt")


# -- output formats ------------------------------------------------------------------------------

def test_concise_is_the_default_on_a_pipe(project):
    proc = run(["--extend-select", "MLL901", "."], project)
    assert proc.returncode == 1
    assert proc.stdout == run(["--extend-select", "MLL901", "--output-format", "concise", "."], project).stdout
    assert findings(proc.stdout) == [("a.py", 3, 1, "MLL101"), ("b.py", 3, 23, "MLL302"), ("c.py", 1, 8, "MLL901")]
    lines = proc.stdout.splitlines()
    assert lines[0] == MLL101_LINE
    assert lines[1].startswith("b.py:3:23: MLL302 " + MLL302_MESSAGE)  # unsafe fix: no [*]
    assert lines[2] == "c.py:1:8: MLL901 [*] unused `noqa` directive (unused: `MLL101`)"  # safe fix: [*]
    assert proc.stderr == ("Found 3 errors.\n[*] 1 fixable with the `--fix` option "
                           "(2 hidden fixes can be enabled with the `--unsafe-fixes` option).\n")


def test_unsafe_fixes_mark_unsafe_fixes_fixable(project):
    proc = run(["--unsafe-fixes", "a.py", "b.py"], project)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("a.py:3:1: MLL101 [*] pad token is the EOS token")
    assert lines[1].startswith("b.py:3:23: MLL302 [*] " + MLL302_MESSAGE)
    assert proc.stderr == "Found 2 errors.\n[*] 2 fixable with the `--fix` option.\n"


def test_full_format(project):
    proc = run(["--output-format", "full", "b.py", "c.py", "--extend-select", "MLL901"], project)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("b.py:3:23: MLL302 " + MLL302_MESSAGE)
    assert lines[1:5] == [
        "  |",
        "2 | model = nn.Transformer()",
        "3 | out = model(src, tgt, memory_mask=src_padding_mask)",
        "  | " + " " * 22 + "^" * len("memory_mask=src_padding_mask"),
    ]
    assert lines[5] == "help: Pass it as `memory_key_padding_mask` (shape (N, S), True = padding)"
    assert lines[6] == ("note: an unsafe fix is available with `--unsafe-fixes`: "
                        "Pass the mask as `memory_key_padding_mask`")
    assert lines[7] == ""
    assert lines[8] == "c.py:1:8: MLL901 [*] unused `noqa` directive (unused: `MLL101`)"
    assert lines[9:12] == ["  |", "1 | x = 1  # noqa: MLL101", "  |        " + "^" * len("# noqa: MLL101")]
    assert "help: Remove the unused codes from the directive" in lines
    assert "\x1b[" not in proc.stdout  # no colours on a pipe

    unsafe = run(["--output-format", "full", "--unsafe-fixes", "b.py"], project)
    assert unsafe.stdout.splitlines()[0].startswith("b.py:3:23: MLL302 [*] ")
    assert ("note: this is an unsafe fix and may change runtime behavior: "
            "Pass the mask as `memory_key_padding_mask`") in unsafe.stdout.splitlines()


def test_json_format(project):
    proc = run(["--output-format", "json", "a.py", "b.py", "d.py"], project)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert [d["code"] for d in data] == ["MLL101", "MLL302"]
    first = data[0]
    required = {"code", "name", "message", "severity", "filename", "location", "end_location", "fix",
                "noqa_row", "url", "cell"}
    assert required <= set(first)
    assert first["name"] == "pad-token-is-eos"
    assert first["severity"] == "error"
    assert first["message"] == MLL101_LINE.split(" MLL101 ", 1)[1]
    assert first["filename"] == str(project / "a.py")
    assert first["location"] == {"row": 3, "column": 1}
    assert first["end_location"] == {"row": 3, "column": 42}
    assert first["noqa_row"] == 3
    assert first["cell"] is None
    fix = first["fix"]
    assert fix["applicability"] == "unsafe"
    assert "pad token" in fix["message"]
    assert fix["edits"][0] == {"content": 'tokenizer.add_special_tokens({"pad_token": "<pad>"})',
                               "location": {"row": 3, "column": 1}, "end_location": {"row": 3, "column": 42}}
    assert fix["edits"][1]["content"] == "\nmodel.resize_token_embeddings(len(tokenizer))"
    assert set(fix["edits"][1]) == {"content", "location", "end_location"}
    second = data[1]
    assert second["location"] == {"row": 3, "column": 23} and second["end_location"] == {"row": 3, "column": 51}
    assert second["fix"]["edits"] == [{"content": "memory_key_padding_mask",
                                       "location": {"row": 3, "column": 23},
                                       "end_location": {"row": 3, "column": 34}}]

    clean = run(["--output-format", "json", "d.py"], project)
    assert clean.returncode == 0
    assert json.loads(clean.stdout) == []


def test_output_file(project, tmp_path):
    report = tmp_path / "report.json"
    proc = run(["--output-format", "json", "--output-file", report, "a.py"], project)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("Found 1 error.\n")
    assert [d["code"] for d in json.loads(report.read_text(encoding="utf-8"))] == ["MLL101"]

    text_report = tmp_path / "report.txt"
    proc = run(["-o", text_report, "a.py", "b.py"], project)
    assert proc.returncode == 1 and proc.stdout == ""
    assert findings(text_report.read_text(encoding="utf-8")) == [("a.py", 3, 1, "MLL101"), ("b.py", 3, 23, "MLL302")]


# -- selection -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--select", "MLL3"], [("b.py", "MLL302")]),
    (["--select", "MLL1,MLL3"], [("a.py", "MLL101"), ("b.py", "MLL302")]),
    (["--select", "MLL1", "--select", "MLL302"], [("a.py", "MLL101"), ("b.py", "MLL302")]),
    (["--select", "ALL", "--ignore", "MLL1"], [("b.py", "MLL302"), ("c.py", "MLL901")]),
    (["--ignore", "mll302"], [("a.py", "MLL101")]),
    (["--select", "mll101", "--ignore", "MLL1"], [("a.py", "MLL101")]),  # the most specific wins
    (["--select", "MLL1", "--ignore", "MLL101"], []),
    (["--extend-select", "MLL901", "--ignore", "MLL1,MLL3"], [("c.py", "MLL901")]),
    (["--select", "MLL9"], [("c.py", "MLL901")]),
], ids=["prefix", "comma", "repeated", "all-ignore", "lowercase-ignore", "specific-select",
        "specific-ignore", "extend-select", "prefix-enables-off-by-default"])
def test_selection(project, args, expected):
    proc = run(["-q", *args, "."], project)
    assert codes_by_path(proc.stdout) == expected
    assert proc.returncode == (1 if expected else 0)


# -- fixing --------------------------------------------------------------------------------------

def test_fix_applies_only_safe_fixes_then_unsafe_fixes(tmp_path):
    write(tmp_path, {"a.py": MLL101_SRC, "b.py": MLL302_SRC, "c.py": MLL901_SRC})
    proc = run(["--fix", "--extend-select", "MLL901", "."], tmp_path)
    assert proc.returncode == 1
    assert codes_by_path(proc.stdout) == [("a.py", "MLL101"), ("b.py", "MLL302")]
    assert proc.stderr == ("Found 3 errors (1 fixed, 2 remaining).\n"
                           "No fixes available (2 hidden fixes can be enabled with the `--unsafe-fixes` option).\n")
    assert (tmp_path / "c.py").read_text() == MLL901_FIXED
    assert (tmp_path / "a.py").read_text() == MLL101_SRC
    assert (tmp_path / "b.py").read_text() == MLL302_SRC

    proc = run(["--fix", "--unsafe-fixes", "."], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr == "Found 2 errors (2 fixed, 0 remaining).\n"
    assert (tmp_path / "a.py").read_text() == MLL101_FIXED
    assert (tmp_path / "b.py").read_text() == MLL302_FIXED

    again = run(["--extend-select", "MLL901", "."], tmp_path)
    assert again.returncode == 0
    assert again.stderr == "All checks passed!\n"


def test_diff_writes_nothing(tmp_path):
    write(tmp_path, {"b.py": MLL302_SRC, "c.py": MLL901_SRC})
    proc = run(["--diff", "--unsafe-fixes", "b.py"], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == (
        "--- a/b.py\n"
        "+++ b/b.py\n"
        "@@ -1,3 +1,3 @@\n"
        " from torch import nn\n"
        " model = nn.Transformer()\n"
        "-out = model(src, tgt, memory_mask=src_padding_mask)\n"
        "+out = model(src, tgt, memory_key_padding_mask=src_padding_mask)\n"
    )
    assert proc.stderr == "Would fix 1 error in 1 file.\n"
    assert (tmp_path / "b.py").read_text() == MLL302_SRC

    # Without --unsafe-fixes there is nothing to apply to b.py: no diff, exit 0.
    proc = run(["--diff", "b.py"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr == "No fixes available.\n"

    proc = run(["--diff", "--extend-select", "MLL901", "."], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == "--- a/c.py\n+++ b/c.py\n@@ -1 +1 @@\n-x = 1  # noqa: MLL101\n+x = 1\n"
    assert (tmp_path / "c.py").read_text() == MLL901_SRC


def test_fix_only_reports_nothing_left(tmp_path):
    write(tmp_path, {"b.py": MLL302_SRC, "c.py": MLL901_SRC})
    proc = run(["--fix-only", "--extend-select", "MLL901", "."], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""  # b.py's MLL302 remains but is not reported
    assert (tmp_path / "c.py").read_text() == MLL901_FIXED
    assert (tmp_path / "b.py").read_text() == MLL302_SRC


def test_exit_non_zero_on_fix(tmp_path):
    write(tmp_path, {"c.py": MLL901_SRC, "e.py": MLL901_SRC})
    plain = run(["--fix", "--extend-select", "MLL901", "c.py"], tmp_path)
    assert plain.returncode == 0
    assert plain.stderr == "Found 1 error (1 fixed, 0 remaining).\n"
    strict = run(["--fix", "--exit-non-zero-on-fix", "--extend-select", "MLL901", "e.py"], tmp_path)
    assert strict.returncode == 1
    assert strict.stdout == ""
    assert (tmp_path / "e.py").read_text() == MLL901_FIXED


def test_exit_zero(project):
    proc = run(["--exit-zero", "a.py"], project)
    assert proc.returncode == 0
    assert proc.stdout == MLL101_LINE + "\n"
    assert proc.stderr.startswith("Found 1 error.\n")


def test_add_noqa(tmp_path):
    write(tmp_path, {"a.py": MLL101_SRC, "b.py": MLL302_SRC.replace("\nout", "  # noqa: E501\nout")
                     .replace("src_padding_mask)\n", "src_padding_mask)  # noqa: E501\n")})
    proc = run(["--add-noqa", "."], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr == "Added 2 noqa directives.\n"
    assert (tmp_path / "a.py").read_text() == MLL101_SRC.replace(
        "tokenizer.eos_token\n", "tokenizer.eos_token  # noqa: MLL101\n")
    # An existing directive gets the code merged in.
    assert (tmp_path / "b.py").read_text().splitlines()[2] == (
        "out = model(src, tgt, memory_mask=src_padding_mask)  # noqa: E501, MLL302")

    again = run(["."], tmp_path)
    assert again.returncode == 0
    assert again.stderr == "All checks passed!\n"


# -- suppression ---------------------------------------------------------------------------------

def test_noqa_comments(tmp_path):
    def with_comment(comment):
        return MLL101_SRC.replace("tokenizer.eos_token\n", f"tokenizer.eos_token  {comment}\n")

    write(tmp_path, {
        "blanket.py": with_comment("# noqa"),
        "code.py": with_comment("# noqa: MLL101"),
        "case.py": with_comment("# NOQA:mll101"),
        "prefix.py": with_comment("# noqa: MLL1"),
        "mixed.py": with_comment("# noqa: E501, MLL101"),
        "other_tool.py": with_comment("# noqa: E501"),
        "other_rule.py": with_comment("# noqa: MLL302"),
        "in_string.py": MLL101_SRC.replace("tokenizer.eos_token\n", "tokenizer.eos_token; s = '# noqa'\n"),
        "wrong_line.py": MLL101_SRC.replace('("m")\ntokenizer.pad', '("m")  # noqa: MLL101\ntokenizer.pad'),
    })
    proc = run(["-q", "."], tmp_path)
    assert proc.returncode == 1
    assert sorted(codes_by_path(proc.stdout)) == [
        ("in_string.py", "MLL101"), ("other_rule.py", "MLL101"), ("other_tool.py", "MLL101"),
        ("wrong_line.py", "MLL101"),
    ]


def test_file_level_noqa(tmp_path):
    both = MLL101_SRC + ("from torch import nn\nnet = nn.Transformer()\n"
                         "out = net(src, tgt, memory_mask=src_padding_mask)\n")
    write(tmp_path, {
        "none.py": both,
        "all.py": "# mllint: noqa\n" + both,
        "scoped.py": "# mllint: noqa: MLL302\n" + both,
        "trailing.py": both + "# mllint: noqa: MLL1\n",
    })
    proc = run(["-q", "."], tmp_path)
    assert proc.returncode == 1
    assert codes_by_path(proc.stdout) == [
        ("none.py", "MLL101"), ("none.py", "MLL302"), ("scoped.py", "MLL101"), ("trailing.py", "MLL302"),
    ]


# -- standard input ------------------------------------------------------------------------------

def test_stdin(tmp_path):
    proc = run(["-"], tmp_path, input=MLL101_SRC)
    assert proc.returncode == 1
    assert findings(proc.stdout) == [("-", 3, 1, "MLL101")]
    assert proc.stderr.startswith("Found 1 error.\n")

    named = run(["--stdin-filename", "train/x.py", "-"], tmp_path, input=MLL101_SRC)
    assert named.returncode == 1
    assert findings(named.stdout) == [("train/x.py", 3, 1, "MLL101")]
    assert list(tmp_path.iterdir()) == []

    clean = run(["-"], tmp_path, input=CLEAN_SRC)
    assert clean.returncode == 0 and clean.stdout == "" and clean.stderr == "All checks passed!\n"


def test_stdin_check_reports_fixable_findings(tmp_path):
    """A plain check of standard input reports what a fix would remove (it used to fix silently)."""
    proc = run(["--extend-select", "MLL901", "-"], tmp_path, input=MLL901_SRC)
    assert proc.returncode == 1
    assert proc.stdout == "-:1:8: MLL901 [*] unused `noqa` directive (unused: `MLL101`)\n"
    unsafe = run(["--unsafe-fixes", "-"], tmp_path, input=MLL302_SRC)
    assert unsafe.returncode == 1
    assert findings(unsafe.stdout) == [("-", 3, 23, "MLL302")]
    assert "[*]" in unsafe.stdout


def test_stdin_fix_prints_the_fixed_source(tmp_path):
    proc = run(["--fix", "--unsafe-fixes", "--stdin-filename", "model.py", "-"], tmp_path, input=MLL302_SRC)
    assert proc.returncode == 0
    assert proc.stdout == MLL302_FIXED
    assert proc.stderr == "Found 1 error (1 fixed, 0 remaining).\n"
    assert not (tmp_path / "model.py").exists()

    # Only safe fixes without --unsafe-fixes: the source comes back unchanged, the finding on stderr.
    proc = run(["--fix", "-"], tmp_path, input=MLL302_SRC)
    assert proc.returncode == 1
    assert proc.stdout == MLL302_SRC
    assert findings(proc.stderr.split("Found")[0]) == [("-", 3, 23, "MLL302")]

    noqa = run(["--add-noqa", "-"], tmp_path, input=MLL101_SRC)
    assert noqa.returncode == 0
    assert noqa.stdout == MLL101_SRC.replace("tokenizer.eos_token\n", "tokenizer.eos_token  # noqa: MLL101\n")


# -- files that are not valid Python -------------------------------------------------------------

def test_syntax_error_and_undecodable_files_do_not_stop_the_run(tmp_path):
    write(tmp_path, {
        "b.py": MLL302_SRC,
        "broken.py": "x = 1\ny = (\n",
        "latin.py": b'x = "caf\xe9"\n',
    })
    proc = run(["-q", "."], tmp_path)
    assert proc.returncode == 1
    assert [(p, r, c) for p, r, _, c in findings(proc.stdout)] == [
        ("b.py", 3, "MLL302"), ("broken.py", 2, "MLL902"), ("latin.py", 1, "MLL903"),
    ]
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("broken.py:2:5: MLL902 SyntaxError: ")
    assert lines[2].startswith("latin.py:1:1: MLL903 cannot decode the file as utf-8")

    # --fix leaves them alone and still fixes the others.
    proc = run(["-q", "--fix", "--unsafe-fixes", "."], tmp_path)
    assert proc.returncode == 1
    assert [c for _, c in codes_by_path(proc.stdout)] == ["MLL902", "MLL903"]
    assert (tmp_path / "b.py").read_text() == MLL302_FIXED
    assert (tmp_path / "broken.py").read_text() == "x = 1\ny = (\n"
    assert (tmp_path / "latin.py").read_bytes() == b'x = "caf\xe9"\n'


# -- mllint rule ---------------------------------------------------------------------------------

def test_rule_markdown(tmp_path):
    proc = run(["rule", "MLL101"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith("# pad-token-is-eos (MLL101)\n")
    assert "## What it does" in proc.stdout
    assert "## Options" in proc.stdout and "`pad-token`" in proc.stdout
    by_name = run(["rule", "padding-mask-as-memory-mask"], tmp_path)
    assert by_name.returncode == 0
    assert by_name.stdout.startswith("# padding-mask-as-memory-mask (MLL302)\n")


def test_rule_all_json(tmp_path):
    proc = run(["rule", "--all", "--output-format", "json"], tmp_path)
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert isinstance(data, list)
    codes = [r["code"] for r in data]
    assert {"MLL101", "MLL302", "MLL901", "MLL902", "MLL903"} <= set(codes)
    assert codes == sorted(codes)
    for rule in data:
        assert {"code", "name", "summary", "severity", "fix", "explanation"} <= set(rule)
        assert "## What it does" in rule["explanation"]
    mll302 = data[codes.index("MLL302")]
    assert mll302["name"] == "padding-mask-as-memory-mask"
    assert mll302["severity"] == "error"
    assert mll302["fix"] == "Fix is sometimes available."


@pytest.mark.parametrize("args, fragment", [
    (["rule", "MLL000"], "unknown rule `MLL000`"),
    (["rule"], "--all"),
    (["rule", "MLL101", "--all"], "--all"),
])
def test_rule_errors(tmp_path, args, fragment):
    assert_usage_error(run(args, tmp_path), fragment)


# -- what fixing keeps ---------------------------------------------------------------------------

def test_fix_keeps_crlf_bom_and_mode(tmp_path):
    bom = b"\xef\xbb\xbf"
    source = bom + MLL101_SRC.replace("\n", "\r\n").encode()
    write(tmp_path, {"win.py": source, "plain.py": MLL302_SRC.replace("\n", "\r\n")})
    for name in ("win.py", "plain.py"):
        os.chmod(tmp_path / name, 0o640)
    proc = run(["--fix", "--unsafe-fixes", "."], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "win.py").read_bytes() == bom + MLL101_FIXED.replace("\n", "\r\n").encode()
    assert (tmp_path / "plain.py").read_bytes() == MLL302_FIXED.replace("\n", "\r\n").encode()
    for name in ("win.py", "plain.py"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.py", "win.py"]  # no temporary files left
