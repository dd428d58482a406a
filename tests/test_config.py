"""End to end: finding, validating and applying configuration files."""

from __future__ import annotations

import pytest

from clihelp import (
    MLL101_SRC, MLL302_FIXED, MLL302_SRC, SFT_SRC, assert_usage_error, codes_by_path, findings, run, write,
)

BOTH = {"a.py": MLL101_SRC, "b.py": MLL302_SRC}


def pyproject(body: str) -> str:
    return "[project]\nname = \"demo\"\n\n[tool.mllint]\n" + body


# -- validation ----------------------------------------------------------------------------------

def test_invalid_toml_names_the_file(tmp_path):
    write(tmp_path, {**BOTH, "pyproject.toml": "[tool.mllint\nignore = []\n"})
    proc = run(["."], tmp_path)
    assert_usage_error(proc, "invalid TOML", str(tmp_path / "pyproject.toml"))


@pytest.mark.parametrize("body, fragments", [
    ("colour = true\n", ["unknown key `colour`"]),
    ("extend_select = [\"MLL1\"]\n", ["unknown key `extend_select`", "did you mean `extend-select`?"]),
    ("ignore = \"MLL101\"\n", ["`ignore`", "must be a list of strings"]),
    ("preview = 1\n", ["`preview`", "must be true or false"]),
    ("select = [\"XYZ1\"]\n", ["unknown rule selector `XYZ1`", "`select`"]),
    ("per-file-ignores = { \"tests/*\" = [\"QQQ1\"] }\n", ["`QQQ1`", "`per-file-ignores`"]),
    ("target-versions = { trl = \"banana\" }\n", ["invalid version `banana`", "`target-versions.trl`"]),
    ("[tool.mllint.rules.MLL000]\npad-token = \"x\"\n", ["unknown rule `MLL000`"]),
    ("[tool.mllint.rules.MLL101]\npad_token = \"x\"\n", ["unknown option `pad_token` for MLL101", "pad-token"]),
    ("[tool.mllint.rules.MLL101]\npad-token = 1\n", ["`rules.MLL101.pad-token`", "must be a str"]),
], ids=["unknown-key", "underscore", "list-type", "bool-type", "select", "per-file-ignores",
        "target-version", "unknown-rule", "unknown-option", "option-type"])
def test_config_errors_exit_2_naming_key_and_file(tmp_path, body, fragments):
    write(tmp_path, {"a.py": MLL101_SRC, "pyproject.toml": pyproject(body)})
    proc = run(["a.py"], tmp_path)
    assert_usage_error(proc, str(tmp_path / "pyproject.toml"), *fragments)


def test_errors_in_mllint_toml_and_config_option(tmp_path):
    write(tmp_path, {"a.py": MLL101_SRC, "mllint.toml": "ignore = [\"MLL101\"]\nbogus = 2\n",
                     "cfg/other.toml": "[tool]\nx = 1\n", "cfg/pyproject.toml": "[project]\nname = \"x\"\n"})
    assert_usage_error(run(["a.py"], tmp_path), "unknown key `bogus`", str(tmp_path / "mllint.toml"))
    assert_usage_error(run(["--config", "cfg/other.toml", "a.py"], tmp_path), "unknown key `tool`", "other.toml")
    assert_usage_error(run(["--config", "cfg/pyproject.toml", "a.py"], tmp_path), "no [tool.mllint] table")
    assert_usage_error(run(["--config", "cfg/missing.toml", "a.py"], tmp_path), "cfg/missing.toml", "does not exist")


# -- discovery of the config file ----------------------------------------------------------------

def test_pyproject_settings_apply_and_isolated_ignores_them(tmp_path):
    write(tmp_path, {**BOTH, "pyproject.toml": pyproject("ignore = [\"MLL101\"]\n")})
    proc = run(["-q", "."], tmp_path)
    assert codes_by_path(proc.stdout) == [("b.py", "MLL302")]
    isolated = run(["-q", "--isolated", "."], tmp_path)
    assert isolated.returncode == 1
    assert codes_by_path(isolated.stdout) == [("a.py", "MLL101"), ("b.py", "MLL302")]


def test_isolated_ignores_even_a_broken_config(tmp_path):
    write(tmp_path, {"a.py": MLL101_SRC, "pyproject.toml": "[tool.mllint\n"})
    proc = run(["-q", "--isolated", "a.py"], tmp_path)
    assert proc.returncode == 1
    assert codes_by_path(proc.stdout) == [("a.py", "MLL101")]


def test_nearest_config_wins(tmp_path):
    write(tmp_path, {
        **BOTH,
        "pyproject.toml": pyproject("ignore = [\"MLL302\"]\n"),
        "sub/a.py": MLL101_SRC, "sub/b.py": MLL302_SRC,
        "sub/pyproject.toml": pyproject("ignore = [\"MLL101\"]\n"),
        # A pyproject.toml without [tool.mllint] is skipped: the root config applies below it.
        "other/pyproject.toml": "[project]\nname = \"other\"\n",
        "other/a.py": MLL101_SRC, "other/b.py": MLL302_SRC,
    })
    proc = run(["-q", "."], tmp_path)
    assert codes_by_path(proc.stdout) == [("a.py", "MLL101"), ("other/a.py", "MLL101"), ("sub/b.py", "MLL302")]
    # The same from inside the subdirectory, and for a file named explicitly.
    inside = run(["-q"], tmp_path / "sub")
    assert codes_by_path(inside.stdout) == [("b.py", "MLL302")]
    explicit = run(["-q", "sub/a.py", "sub/b.py"], tmp_path)
    assert codes_by_path(explicit.stdout) == [("sub/b.py", "MLL302")]


def test_mllint_toml_wins_over_pyproject_in_the_same_directory(tmp_path):
    write(tmp_path, {**BOTH, "pyproject.toml": pyproject("ignore = [\"MLL101\"]\n"),
                     "mllint.toml": "ignore = [\"MLL302\"]\n"})
    proc = run(["-q", "."], tmp_path)
    assert codes_by_path(proc.stdout) == [("a.py", "MLL101")]


def test_config_option_replaces_discovery(tmp_path):
    write(tmp_path, {**BOTH, "pyproject.toml": pyproject("ignore = [\"MLL101\"]\n"),
                     "conf/strict.toml": "select = [\"MLL1\"]\n"})
    proc = run(["-q", "--config", "conf/strict.toml", "."], tmp_path)
    assert codes_by_path(proc.stdout) == [("a.py", "MLL101")]


def test_command_line_wins_over_config(tmp_path):
    write(tmp_path, {**BOTH, "pyproject.toml": pyproject("select = [\"MLL1\"]\n")})
    assert codes_by_path(run(["-q", "--select", "MLL3", "."], tmp_path).stdout) == [("b.py", "MLL302")]
    assert codes_by_path(run(["-q", "--extend-select", "MLL3", "."], tmp_path).stdout) == [
        ("a.py", "MLL101"), ("b.py", "MLL302")]
    assert run(["-q", "--ignore", "MLL101", "."], tmp_path).returncode == 0


def test_per_file_ignores(tmp_path):
    write(tmp_path, {
        **BOTH, "tests/a.py": MLL101_SRC, "tests/b.py": MLL302_SRC, "legacy/old.py": MLL302_SRC,
        "pyproject.toml": pyproject("per-file-ignores = { \"tests/**\" = [\"MLL1\"], \"legacy/*.py\" = [\"ALL\"] }\n"),
    })
    proc = run(["-q", "."], tmp_path)
    assert codes_by_path(proc.stdout) == [("a.py", "MLL101"), ("b.py", "MLL302"), ("tests/b.py", "MLL302")]
    # Standard input is matched through --stdin-filename.
    stdin = run(["-q", "--stdin-filename", "tests/new.py", "-"], tmp_path, input=MLL101_SRC)
    assert stdin.returncode == 0 and stdin.stdout == ""


# -- show-settings -------------------------------------------------------------------------------

def test_show_settings(tmp_path):
    write(tmp_path, {**BOTH, "pyproject.toml": pyproject(
        "ignore = [\"MLL101\"]\ntarget-versions = { trl = \"0.15\" }\n"
        "[tool.mllint.rules.MLL101]\npad-token = \"<|pad|>\"\n")})
    proc = run(["--show-settings", "a.py"], tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "Settings for: a.py"
    assert f"config file: {tmp_path / 'pyproject.toml'}" in lines
    assert "ignore: ['MLL101']" in lines
    assert "  trl 0.15 (target-versions in pyproject.toml)" in lines
    assert f"cache-dir: {tmp_path / '.mllint_cache'}" in lines
    assert 'rule options: {"MLL101": {"pad-token": "<|pad|>"}}' in lines
    enabled = lines[lines.index("enabled rules:") + 1:]
    assert "  MLL302 padding-mask-as-memory-mask" in enabled
    assert not any("MLL101" in line for line in enabled)
    assert not any("MLL901" in line for line in enabled)

    isolated = run(["--show-settings", "--isolated", "--extend-select", "MLL901", "a.py"], tmp_path)
    assert isolated.returncode == 0
    lines = isolated.stdout.splitlines()
    assert "config file: (none: defaults)" in lines
    enabled = lines[lines.index("enabled rules:") + 1:]
    assert {"  MLL101 pad-token-is-eos", "  MLL901 unused-noqa"} <= set(enabled)


# -- options that reach the rules and the fixer --------------------------------------------------

def test_rule_option_reaches_the_fix(tmp_path):
    write(tmp_path, {"a.py": MLL101_SRC, "pyproject.toml": pyproject(
        "[tool.mllint.rules.MLL101]\npad-token = \"<|pad|>\"\n")})
    proc = run(["--fix", "--unsafe-fixes", "a.py"], tmp_path)
    assert proc.returncode == 0
    text = (tmp_path / "a.py").read_text()
    assert 'tokenizer.add_special_tokens({"pad_token": "<|pad|>"})' in text
    assert "<pad>\"" not in text
    assert "model.resize_token_embeddings(len(tokenizer))" in text


def test_target_versions(tmp_path):
    write(tmp_path, {"plain/sft.py": SFT_SRC, "old/sft.py": SFT_SRC,
                     "old/pyproject.toml": pyproject("target-versions = { trl = \"0.15\" }\n"),
                     "new/sft.py": SFT_SRC,
                     "new/pyproject.toml": pyproject("target-versions = { trl = \"0.16.1\" }\n")})
    proc = run(["-q", "."], tmp_path)
    assert proc.returncode == 1
    assert findings(proc.stdout) == [("old/sft.py", 2, 1, "MLL101")]
    assert "trl 0.15" in proc.stdout

    cli = run(["-q", "--target-version", "trl=0.15", "plain/sft.py"], tmp_path)
    assert findings(cli.stdout) == [("plain/sft.py", 2, 1, "MLL101")]
    # The command line wins over the config file.
    newer = run(["-q", "--target-version", "trl=0.16", "old/sft.py"], tmp_path)
    assert newer.returncode == 0 and newer.stdout == ""
    # Without any target version there is no finding.
    assert run(["-q", "--isolated", "old/sft.py"], tmp_path).stdout == ""


def test_unsafe_fixes_from_config(tmp_path):
    write(tmp_path, {"b.py": MLL302_SRC, "pyproject.toml": pyproject("unsafe-fixes = true\n")})
    check = run(["b.py"], tmp_path)
    assert check.stdout.startswith("b.py:3:23: MLL302 [*] ")
    assert check.stderr == "Found 1 error.\n[*] 1 fixable with the `--fix` option.\n"
    stdin = run(["--stdin-filename", "b.py", "-"], tmp_path, input=MLL302_SRC)
    assert stdin.stdout.startswith("b.py:3:23: MLL302 [*] ")
    assert stdin.stderr == check.stderr
    overridden = run(["--no-unsafe-fixes", "--fix", "b.py"], tmp_path)
    assert overridden.returncode == 1
    assert (tmp_path / "b.py").read_text() == MLL302_SRC
    fixed = run(["--fix", "b.py"], tmp_path)
    assert fixed.returncode == 0
    assert (tmp_path / "b.py").read_text() == MLL302_FIXED
