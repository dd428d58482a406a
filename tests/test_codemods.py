"""mllint's fixes as libcst codemod commands, run through libcst's own runner."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

from libcst.codemod import CodemodCommand, CodemodContext, CodemodTest

import mllint.codemods
from clihelp import (
    CLEAN_SRC, MLL101_FIXED, MLL101_SRC, MLL302_FIXED, MLL302_SRC, MLL901_FIXED, MLL901_SRC, run, write,
)
from mllint.core.diagnostic import Applicability, Severity
from mllint.core.registry import Registry
from mllint.core.rule import Invalid, Rule
from mllint.integrations.codemods import generate


def libcst_codemod(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLLINT_DEBUG", "LIBCST_TOOL_REQUIRE_CONFIG")}
    return subprocess.run([sys.executable, "-m", "libcst.tool", "codemod", *map(str, args)], cwd=str(cwd),
                          capture_output=True, text=True, env=env, timeout=120)


def read_all(root: Path) -> Dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(root.rglob("*.py"))}


def test_a_command_per_fixable_rule(registry):
    fixable = [rule for rule in registry if rule.fix_availability() != "none"]
    assert {"MLL101", "MLL302", "MLL901"} <= {rule.code for rule in fixable}
    for rule in registry:
        if rule in fixable:
            command = getattr(mllint.codemods, rule.__name__)
            assert issubclass(command, CodemodCommand)
            assert command.codes == (rule.code,)
            assert getattr(mllint.codemods, rule.code) is command
            assert command.__module__ == "mllint.codemods" and command.__qualname__ == rule.__name__
            assert rule.code in command.DESCRIPTION
        else:
            assert not hasattr(mllint.codemods, rule.code)
    assert issubclass(mllint.codemods.FixAll, CodemodCommand) and mllint.codemods.FixAll.codes is None


class _NewRule(Rule):
    code = "MLL777"
    name = "new-rule"
    summary = "a rule added later"
    severity = Severity.WARNING
    INVALID = (Invalid("x = 1\n", fix="x = 2\n", applicability=Applicability.SAFE),)


class _NoFix(Rule):
    code = "MLL778"
    name = "no-fix"
    summary = "a rule without a fix"
    INVALID = (Invalid("x = 1\n"),)


def test_commands_come_from_the_registry():
    commands = generate("some.module", Registry([_NewRule, _NoFix]))
    assert set(commands) == {"_NewRule", "MLL777"}
    assert commands["MLL777"].codes == ("MLL777",) and commands["MLL777"].__module__ == "some.module"


def test_fixall_is_mllint_fix(tmp_path):
    """``FixAll`` through ``python -m libcst.tool codemod -x`` (two worker processes, so the
    generated classes must pickle) changes every file exactly as ``mllint --fix`` does."""
    files = {"pyproject.toml": '[tool.mllint]\nextend-select = ["MLL901"]\n',  # read by both
             "a.py": MLL101_SRC, "b.py": MLL302_SRC, "pkg/c.py": MLL901_SRC, "d.py": CLEAN_SRC,
             **{f"clean{i}.py": CLEAN_SRC for i in range(4)}}
    write(tmp_path / "codemod", files)
    write(tmp_path / "cli", files)

    proc = libcst_codemod(["-x", "mllint.codemods.FixAll", "--no-format", "-j", "2", "--hide-progress", "."],
                          tmp_path / "codemod")
    assert proc.returncode == 0, proc.stderr
    assert "Transformed 1 files successfully" in proc.stderr  # the safe MLL901 fix only
    assert "unsafe fix available with --unsafe-fixes" in proc.stderr
    run(["--fix", "."], tmp_path / "cli")
    assert read_all(tmp_path / "codemod") == read_all(tmp_path / "cli")
    assert read_all(tmp_path / "codemod")["pkg/c.py"] == MLL901_FIXED

    proc = libcst_codemod(["-x", "mllint.codemods.FixAll", "--no-format", "-j", "2", "--unsafe-fixes",
                           "--hide-progress", "."], tmp_path / "codemod")
    assert proc.returncode == 0, proc.stderr
    run(["--fix", "--unsafe-fixes", "."], tmp_path / "cli")
    fixed = read_all(tmp_path / "codemod")
    assert fixed == read_all(tmp_path / "cli")
    assert (fixed["a.py"], fixed["b.py"]) == (MLL101_FIXED, MLL302_FIXED)
    assert filecmp.cmp(tmp_path / "codemod" / "a.py", tmp_path / "cli" / "a.py", shallow=False)


def test_one_rule_through_the_configured_modules(tmp_path):
    """With ``modules: [mllint]`` in ``.libcst.codemod.yaml`` the command is
    ``codemods.<RuleClass>``; it applies that rule's fixes and no other."""
    write(tmp_path, {
        ".libcst.codemod.yaml": "modules:\n- mllint\n- libcst.codemod.commands\nrepo_root: .\n",
        "a.py": MLL101_SRC, "b.py": MLL302_SRC,
    })
    proc = libcst_codemod(["codemods.PadTokenIsEos", "--no-format", "--hide-progress", "."], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no safe mllint fix applies (1 unsafe fix available with --unsafe-fixes)" in proc.stderr
    assert read_all(tmp_path) == {"a.py": MLL101_SRC, "b.py": MLL302_SRC}

    proc = libcst_codemod(["codemods.PadTokenIsEos", "--no-format", "--unsafe-fixes", "--hide-progress", "."],
                          tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_all(tmp_path) == {"a.py": MLL101_FIXED, "b.py": MLL302_SRC}

    shutil.copy(tmp_path / "b.py", tmp_path / "b2.py")
    proc = libcst_codemod(["codemods.MLL302", "--no-format", "--unsafe-fixes", "--hide-progress", "b.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_all(tmp_path) == {"a.py": MLL101_FIXED, "b.py": MLL302_FIXED, "b2.py": MLL302_SRC}


class TestUnusedNoqaCodemod(CodemodTest):
    TRANSFORM = mllint.codemods.UnusedNoqa

    def context(self) -> CodemodContext:
        return CodemodContext(filename=os.path.join(os.getcwd(), "train.py"))

    def test_removes_an_unused_directive(self):
        self.assertCodemod(MLL901_SRC, MLL901_FIXED, context_override=self.context(), isolated=True)

    def test_keeps_a_directive_the_other_rules_use(self):
        # Only MLL901's fixes are applied, but every selected rule runs: MLL101 uses the directive.
        used = MLL101_SRC.replace("tokenizer.eos_token\n", "tokenizer.eos_token  # noqa: MLL101\n")
        self.assertCodemod(used, used, context_override=self.context(), isolated=True, expected_skip=True)

    def test_leaves_other_rules_fixes_alone(self):
        both = MLL302_SRC + "x = 1  # noqa: MLL101\n"
        self.assertCodemod(both, MLL302_SRC + "x = 1\n", context_override=self.context(), isolated=True,
                           unsafe_fixes=True)
