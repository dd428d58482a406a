"""Target versions: pins read from every kind of project file, nearest upward per package,
explicit settings first, the latest known last; premises and messages follow them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.version import Version

from mllint import Settings, lint_source
from mllint.cli import cli
from mllint.settings import ConfigResolver
from mllint.sources.notebook import lint_notebook, parse_notebook
from mllint.versions import LATEST_KNOWN, describe
from mllint.versions.pins import (
    PinFinder, lowest_allowed, pip_line_pins, pyproject_pins, requirements_pins, setup_cfg_pins,
    setup_py_pins)


def _versions(pins):
    return {p.package: str(p.version) for p in pins}


@pytest.mark.parametrize("spec, lowest", [
    ("==4.46.0", "4.46.0"), (">=4.46,<5", "4.46"), ("~=0.15.2", "0.15.2"), ("==4.3.*", "4.3"),
    (">4.30", "4.30.1"), (">=4.30,!=4.30.0", "4.30.1"), ("<5", None), ("", None), ("!=4.1", None),
    ("not a spec", None),
])
def test_lowest_allowed(spec, lowest):
    version = lowest_allowed(spec)
    assert (str(version) if version is not None else None) == lowest


def test_requirements_file():
    text = ("# training deps\n"
            "transformers[torch]>=4.46,<5  # newest API\n"
            "-e .\n"
            "--index-url https://example.invalid/simple\n"
            "trl==0.15.2 ; python_version > '3.8'\n"
            "torch @ https://example.invalid/torch.whl\n"
            "pytorch-lightning~=2.0\n"
            "peft \\\n"
            "    ==0.10.0\n"
            "numpy==1.26\n"
            "accelerate\n")
    pins = requirements_pins(text, "requirements.txt")
    assert _versions(pins) == {"transformers": "4.46", "trl": "0.15.2", "lightning": "2.0", "peft": "0.10.0"}
    assert [p.source for p in pins] == ["requirements.txt:2", "requirements.txt:5", "requirements.txt:7",
                                        "requirements.txt:8"]


def test_requirements_include(tmp_path):
    (tmp_path / "base.txt").write_text("transformers==4.38.2\n")
    (tmp_path / "requirements.txt").write_text("-r base.txt\n-c missing.txt\ntrl>=0.8\n")
    pins = PinFinder(label=lambda p: p.name).pins(tmp_path)
    assert {p: (str(v.version), v.source) for p, v in pins.items()} == {
        "transformers": ("4.38.2", "base.txt:1"), "trl": ("0.8", "requirements.txt:3")}


def test_pyproject_pep621_and_poetry():
    text = """
[project]
name = "x"
dependencies = ["transformers>=4.40", "torch"]
[project.optional-dependencies]
rl = ["trl==0.15.2"]

[tool.poetry.dependencies]
python = "^3.10"
peft = "^0.10.0"
lightning = {version = "~2.1", extras = ["extra"]}
[tool.poetry.group.dev.dependencies]
torch = ">=2.1,<3"
"""
    pins = pyproject_pins(text, "pyproject.toml")
    assert _versions(pins) == {"transformers": "4.40", "trl": "0.15.2", "peft": "0.10.0",
                               "lightning": "2.1", "torch": "2.1"}
    sources = {p.package: p.source for p in pins}
    assert sources["trl"] == "pyproject.toml [project.optional-dependencies.rl]"
    assert sources["torch"] == "pyproject.toml [tool.poetry.group.dev.dependencies]"
    assert pyproject_pins("not = [toml", "pyproject.toml") == []


def test_poetry_exact_and_alternatives():
    text = '[tool.poetry.dependencies]\ntransformers = "4.30.2"\ntrl = "^0.7 || ^0.8"\ntorch = "*"\n'
    assert _versions(pyproject_pins(text, "p")) == {"transformers": "4.30.2", "trl": "0.7"}


def test_setup_cfg():
    text = ("[metadata]\nname = x\n[options]\ninstall_requires =\n    transformers==4.30.2\n    numpy\n"
            "[options.extras_require]\nrl = trl>=0.8\n")
    pins = setup_cfg_pins(text, "setup.cfg")
    assert _versions(pins) == {"transformers": "4.30.2", "trl": "0.8"}
    assert setup_cfg_pins("[options\nbroken", "setup.cfg") == []


def test_setup_py_literal_arguments_only():
    text = ("from setuptools import setup\n"
            "deps = ['torch>=1.13']\n"
            "setup(name='my-trainer', version='0.1',\n"
            "      install_requires=['transformers>=4.38,<5', 'numpy'],\n"
            "      extras_require={'rl': ['trl==0.15.2']})\n")
    assert _versions(setup_py_pins(text, "setup.py")) == {"transformers": "4.38", "trl": "0.15.2"}
    assert setup_py_pins("setup(install_requires=deps)\n", "setup.py") == []  # not a literal: unknown
    assert setup_py_pins("def broken(:\n", "setup.py") == []


@pytest.mark.parametrize("name, text, expected", [
    # A vendored copy or a fork of a tracked package targets its own version.
    ("setup.py", "setup(name='transformers', version='4.4.2', install_requires=['torch>=1.0'])\n",
     {"transformers": "4.4.2", "torch": "1.0"}),
    ("setup.cfg", "[metadata]\nname = pytorch-lightning\nversion = 1.9.5\n", {"lightning": "1.9.5"}),
    ("pyproject.toml", '[project]\nname = "trl"\nversion = "0.15.2"\ndependencies = ["transformers>=4.46"]\n',
     {"trl": "0.15.2", "transformers": "4.46"}),
    ("pyproject.toml", '[project]\nname = "trl"\ndynamic = ["version"]\n', {}),
])
def test_a_project_that_is_the_package_targets_its_own_version(tmp_path, name, text, expected):
    (tmp_path / ".git").mkdir()
    (tmp_path / name).write_text(text)
    assert {p: str(v.version) for p, v in PinFinder().pins(tmp_path).items()} == expected


@pytest.mark.parametrize("line, expected", [
    ("!pip install -q -U transformers==4.30 'trl<0.16,>=0.15' accelerate", {"transformers": "4.30", "trl": "0.15"}),
    ("%pip install --index-url https://x.invalid peft==0.7.1", {"peft": "0.7.1"}),
    ("!pip3 install torch>=2.1", {"torch": "2.1"}),
    ("!python -m pip install \"lightning==2.2.0\"", {"lightning": "2.2.0"}),
    ("%pip install git+https://github.com/huggingface/transformers", {}),
    ("!pip install -r requirements.txt", {}),
    ("!pip install transformers==$VERSION", {}),
    ("!pip list | grep transformers==4.30", {}),
    ("%conda install transformers=4.30", {}),
    ("pip install -q trl==0.15.2", {"trl": "0.15.2"}),  # automagic
])
def test_pip_lines(line, expected):
    assert _versions(pip_line_pins(line, "cell")) == expected


def _project(tmp_path: Path) -> Path:
    """A repository with a root requirements file and two projects pinning trl differently."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "requirements.txt").write_text("torch==2.1.0\ntrl==0.7.0\n")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "requirements-train.txt").write_text("trl==0.15.2\n")
    (tmp_path / "new" / "src").mkdir(parents=True)
    (tmp_path / "new" / "pyproject.toml").write_text('[project]\nname = "n"\ndependencies = ["trl>=0.16"]\n')
    return tmp_path


def test_nearest_pin_wins_per_package(tmp_path):
    root = _project(tmp_path)
    finder = PinFinder(label=lambda p: p.relative_to(root).as_posix())
    old = finder.pins(root / "old")
    new = finder.pins(root / "new" / "src")
    assert (str(old["trl"].version), old["trl"].source) == ("0.15.2", "old/requirements-train.txt:1")
    assert (str(new["trl"].version), new["trl"].source) == ("0.16", "new/pyproject.toml [project.dependencies]")
    assert str(new["torch"].version) == "2.1.0"  # inherited from the repository root


def test_search_stops_at_the_repository_root(tmp_path):
    (tmp_path / "requirements.txt").write_text("trl==0.7.0\n")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert PinFinder().pins(tmp_path / "repo") == {}


def test_unreadable_pin_files_are_skipped(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "requirements.txt").write_bytes(b"\xff\xfe\x00trl==0.7\n")
    (tmp_path / "requirements-dev.txt").mkdir()  # a directory with a pin file's name
    (tmp_path / "setup.cfg").write_text("[options\n")
    assert PinFinder().pins(tmp_path) == {}


def test_resolver_order_explicit_then_pins_then_latest(tmp_path):
    root = _project(tmp_path)
    settings = ConfigResolver({}).for_path(root / "old" / "train.py")
    assert settings.target_versions["trl"] == Version("0.15.2")
    assert settings.version_sources["trl"].endswith("requirements-train.txt:1")
    cli_given = ConfigResolver({"target_versions": {"trl": Version("0.20")}}).for_path(root / "old" / "train.py")
    assert (cli_given.target_versions["trl"], cli_given.version_sources["trl"]) == (Version("0.20"), "--target-version")
    (root / "old" / "mllint.toml").write_text('[target-versions]\ntrl = "0.19.1"\n')
    configured = ConfigResolver({}).for_path(root / "old" / "train.py")
    assert configured.target_versions["trl"] == Version("0.19.1")
    assert configured.version_sources["trl"].startswith("target-versions in ")
    assert configured.target_versions["torch"] == Version("2.1.0")  # still pinned
    isolated = ConfigResolver({}, isolated=True).for_path(root / "old" / "train.py")
    assert isolated.target_versions == {}
    assert describe("trl", isolated.target_versions, isolated.version_sources).startswith(
        f"trl {LATEST_KNOWN['trl']} (assumed")


SFT_SCRIPT = """\
from transformers import AutoTokenizer
from trl import SFTTrainer

tok = AutoTokenizer.from_pretrained("mistralai/Mistral-7B-v0.1")
tok.pad_token = tok.eos_token
trainer = SFTTrainer(model="mistralai/Mistral-7B-v0.1", tokenizer=tok, train_dataset=dataset)
"""


def test_pins_gate_rules_through_the_cli(tmp_path, monkeypatch):
    root = _project(tmp_path)
    for project in ("old", "new"):
        (root / project / "train.py").write_text(SFT_SCRIPT)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(cli, ["check", "--output-format", "concise", "--select", "MLL101", "."])
    lines = [line for line in result.output.splitlines() if "MLL101" in line]
    assert len(lines) == 1 and lines[0].startswith("old/train.py:5:1: MLL101"), result.output
    assert "trl 0.15.2" in lines[0]
    shown = CliRunner().invoke(cli, ["check", "--show-settings", "old/train.py"])
    assert "trl 0.15.2 (old/requirements-train.txt:1)" in shown.output
    assert "torch 2.1.0 (requirements.txt:1)" in shown.output
    assert f"peft {LATEST_KNOWN['peft']} (assumed" in shown.output
    overridden = CliRunner().invoke(cli, ["check", "--select", "MLL101", "--target-version", "trl=0.16", "old"])
    assert "MLL101" not in overridden.output


def _notebook(*sources: str) -> str:
    cells = [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": s}
             for s in sources]
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": cells,
                       "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "P"}}})


def test_notebook_pin_cell_is_nearest_but_not_explicit():
    notebook = parse_notebook(_notebook("!pip install -q trl==0.15.2 transformers", SFT_SCRIPT).encode(), "nb.ipynb")
    pinned_elsewhere = Settings(target_versions={"trl": Version("1.0")}, version_sources={"trl": "requirements.txt:1"},
                                pinned_packages=("trl",), select=("MLL101",))
    found = lint_notebook(notebook, "nb.ipynb", pinned_elsewhere)
    assert [(d.code, d.cell) for d in found] == [("MLL101", 2)]
    assert "trl 0.15.2" in found[0].message
    explicit = Settings(target_versions={"trl": Version("1.0")}, version_sources={"trl": "--target-version"},
                        select=("MLL101",))
    assert lint_notebook(notebook, "nb.ipynb", explicit) == []
    unpinned = parse_notebook(_notebook("!pip install -q trl transformers", SFT_SCRIPT).encode(), "nb.ipynb")
    assert lint_notebook(unpinned, "nb.ipynb", Settings(select=("MLL101",))) == []


def test_premise_outside_the_target_version_silences_the_rule():
    source = "import torch\nmask = torch.tril(torch.ones(4, 4))\nlayer = torch.nn.MultiheadAttention(8, 2)\nlayer(x, x, x, attn_mask=mask)\n"
    assert [d.code for d in lint_source(source, "m.py", Settings(select=("MLL304",)))] == ["MLL304"]
    old = Settings(select=("MLL304",), target_versions={"torch": Version("1.13")})
    assert lint_source(source, "m.py", old) == []
