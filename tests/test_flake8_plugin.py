"""The flake8 plugin (entry point ``MLL``), run through the real ``flake8`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Union

import pytest

from clihelp import MLL101_SRC, MLL302_SRC, SFT_SRC, run, write
from mllint.integrations.flake8 import mask_noqa

# MLL101 inside a function (row 6, column 5), from examples/finetune_lora.py.
INDENTED_MLL101 = """\
from transformers import AutoTokenizer, DataCollatorForLanguageModeling


def build(name):
    tokenizer = AutoTokenizer.from_pretrained(name)
    tokenizer.pad_token = tokenizer.eos_token
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)
"""


def flake8(args: Sequence[Union[str, os.PathLike]], cwd: Path, input: str = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLLINT_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "flake8", *map(str, args)], cwd=str(cwd), input=input,
                          capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def lines(stdout: str) -> List[str]:
    return sorted(stdout.splitlines())


def test_flake8_reports_what_mllint_reports(tmp_path):
    write(tmp_path, {"a.py": INDENTED_MLL101, "b.py": MLL302_SRC, "c.py": MLL101_SRC})
    files = ["a.py", "b.py", "c.py"]
    proc = flake8(["--isolated", "--select", "MLL", *files], tmp_path)
    assert proc.returncode == 1, proc.stderr
    mllint = run(["--output-format", "concise", "--isolated", *files], tmp_path)
    assert mllint.returncode == 1
    expected = [line.replace(" [*] ", " ") for line in mllint.stdout.splitlines()]
    assert len(expected) == 3
    assert lines(proc.stdout) == sorted(expected)
    # The printed column is mllint's 1-based column (the plugin reports a 0-based offset).
    assert "a.py:6:5: MLL101 pad token is the EOS token" in proc.stdout
    assert "b.py:3:23: MLL302 " in proc.stdout


def test_flake8_stdin_and_default_selection(tmp_path):
    proc = flake8(["--isolated", "-", "--stdin-display-name", "train.py"], tmp_path, input=INDENTED_MLL101)
    assert proc.returncode == 1
    assert [line for line in proc.stdout.splitlines() if " MLL" in line] == [
        line for line in flake8(["--isolated", "--select", "MLL", "-", "--stdin-display-name", "train.py"],
                                tmp_path, input=INDENTED_MLL101).stdout.splitlines()]
    assert "train.py:6:5: MLL101 " in proc.stdout


NOQA_CASES = {
    "coded.py": ("  # noqa: MLL101", False),
    "prefix.py": ("  # NOQA:MLL1", False),
    "bare.py": ("  # noqa", False),
    "other_tool.py": ("  # noqa: E501", True),
    "other_rule.py": ("  # noqa: MLL302", True),
}


@pytest.fixture(scope="module")
def noqa_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("noqa")
    files = {name: INDENTED_MLL101.replace("tokenizer.eos_token\n", f"tokenizer.eos_token{comment}\n")
             for name, (comment, _) in NOQA_CASES.items()}
    files["file_level.py"] = "# mllint: noqa: MLL101\n" + INDENTED_MLL101
    write(root, files)
    return root


def test_noqa(noqa_project):
    names = sorted(n for n in os.listdir(noqa_project) if n.endswith(".py"))  # not .mllint_cache
    proc = flake8(["--isolated", "--select", "MLL", *names], noqa_project)
    reported = {line.split(":")[0] for line in proc.stdout.splitlines()}
    assert reported == {name for name, (_, shown) in NOQA_CASES.items() if shown}
    mllint = run(["--output-format", "concise", "--isolated", *names], noqa_project)
    assert {line.split(":")[0] for line in mllint.stdout.splitlines()} == reported


def test_disable_noqa_reports_everything(noqa_project):
    names = sorted(n for n in os.listdir(noqa_project) if n.endswith(".py"))  # not .mllint_cache
    proc = flake8(["--isolated", "--select", "MLL", "--disable-noqa", *names], noqa_project)
    positions = sorted(line.split(": ")[0] for line in proc.stdout.splitlines())
    assert positions == sorted(f"{name}:{7 if name == 'file_level.py' else 6}:5" for name in names)


def test_mask_noqa_keeps_every_position():
    source = "x = 1  # NoQA: MLL101\ns = '# noqa'\n# mllint: noqa\n"
    masked = mask_noqa(source)
    assert len(masked) == len(source)
    assert masked.splitlines()[1] == "s = '# noqa'"  # strings are not comments
    assert "noqa" not in "".join(masked.splitlines()[0::2]).lower()
    assert mask_noqa("x = (\n") == "x = (\n"  # untokenizable: left alone


def test_syntax_errors_are_flake8s(tmp_path):
    write(tmp_path, {"broken.py": "def f(:\n    pass\n"})
    proc = flake8(["--isolated", "--select", "MLL,E999", "broken.py"], tmp_path)
    assert proc.returncode == 1
    assert [line.split(": ")[1].split()[0] for line in proc.stdout.splitlines()] == ["E999"]
    assert run(["--output-format", "concise", "broken.py"], tmp_path).stdout.split()[1] == "MLL902"


def test_config_and_options(tmp_path):
    write(tmp_path, {
        "plain/sft.py": SFT_SRC,  # MLL101 only when trl < 0.16 is the target
        "pinned/pyproject.toml": '[tool.mllint]\ntarget-versions = { trl = "0.15.2" }\nextend-select = ["MLL901"]\n',
        "pinned/sft.py": SFT_SRC,
        "pinned/stale.py": "x = 1  # noqa: MLL302\n",
    })
    proc = flake8(["--isolated", "--select", "MLL", "plain", "pinned"], tmp_path)
    assert [line.split(": ")[0] for line in lines(proc.stdout)] == ["pinned/sft.py:2:1", "pinned/stale.py:1:8"]
    assert "MLL901 unused `noqa` directive" in proc.stdout

    proc = flake8(["--isolated", "--select", "MLL", "--mllint-isolated", "pinned"], tmp_path)
    assert proc.stdout == "" and proc.returncode == 0

    proc = flake8(["--isolated", "--select", "MLL", "--mllint-target-version", "trl=0.15", "plain"], tmp_path)
    assert proc.stdout.startswith("plain/sft.py:2:1: MLL101 ")

    write(tmp_path, {"plain/.flake8": "[flake8]\nselect = MLL\nmllint-target-version = trl=0.15,transformers=4.46\n"})
    proc = flake8(["sft.py"], tmp_path / "plain")
    assert proc.stdout.startswith("sft.py:2:1: MLL101 ")

    # --mllint-config: one file for everything (pinned/'s own config, with MLL901, is not read).
    write(tmp_path, {"other.toml": 'target-versions = { trl = "0.15" }\n'})  # whole-file, like mllint.toml
    proc = flake8(["--isolated", "--select", "MLL", "--mllint-config", "other.toml", "plain", "pinned"], tmp_path)
    assert [line.split(": ")[0] for line in lines(proc.stdout)] == ["pinned/sft.py:2:1", "plain/sft.py:2:1"]


@pytest.mark.parametrize("args, files, message", [
    (["--mllint-target-version", "trl"], {}, "mllint: --mllint-target-version takes PKG=VER, not `trl`"),
    (["--mllint-target-version", "trl=x"], {}, "mllint: invalid version `x` in --mllint-target-version"),
    (["--mllint-config", "missing.toml"], {}, "mllint: config file `"),
    ([], {"pyproject.toml": "[tool.mllint]\nbogus = 1\n"}, "mllint: unknown key `bogus` in "),
])
def test_mistakes_stop_flake8_with_one_line(tmp_path, args, files, message):
    write(tmp_path, {"a.py": "x = 1\n", "b.py": "y = 2\n", **files})
    proc = flake8(["--isolated", "--select", "MLL", *args, "a.py", "b.py"], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == "There was a critical error during execution of Flake8:"
    assert proc.stdout.splitlines()[1].startswith(message), proc.stdout


def test_plugin_import_is_cheap():
    """flake8 imports every plugin on each start: the plugin must not pull in libcst or the rules."""
    code = ("import sys, mllint.integrations.flake8; "
            "print(sorted(m for m in ('libcst', 'mllint.core.engine', 'mllint.rules', 'mllint.settings') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
