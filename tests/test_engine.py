"""The pure core: suppressions, selection, fix application, containment of rule bugs."""

from __future__ import annotations

import libcst as cst
import pytest
from packaging.version import Version

from mllint import Applicability, Settings, fix_source, lint_source
from mllint.core.engine import apply_fixes
from mllint.core.registry import Registry, default_registry
from mllint.core.rule import Invalid, Rule, Valid
from mllint.settings import enabled_codes

PAD_EOS = (
    "from transformers import DataCollatorForLanguageModeling\n"
    "tokenizer.pad_token = tokenizer.eos_token{comment}\n"
    "collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)\n"
)


def codes(source, settings=None):
    return [d.code for d in lint_source(source, "t.py", settings or Settings())]


@pytest.mark.parametrize("comment, suppressed", [
    ("", False),
    ("  # noqa", True),
    ("  # noqa: MLL101", True),
    ("  # NOQA:mll101", True),
    ("  # noqa: MLL1", True),
    ("  # noqa: E501, MLL101", True),
    ("  # noqa: E501", False),
    ("  # noqa: MLL302", False),
    ("  # type: ignore  # noqa: MLL101", True),
])
def test_line_noqa(comment, suppressed):
    assert codes(PAD_EOS.format(comment=comment)) == ([] if suppressed else ["MLL101"])


def test_noqa_inside_a_string_suppresses_nothing():
    source = PAD_EOS.format(comment="") + "s = '# noqa'\n"
    assert codes(source) == ["MLL101"]


@pytest.mark.parametrize("header, expected", [
    ("# mllint: noqa\n", []),
    ("# mllint: noqa: MLL101\n", []),
    ("# mllint: noqa: MLL302\n", ["MLL101"]),
    ("# flake8: noqa: E501\n", ["MLL101"]),
])
def test_file_level_noqa(header, expected):
    assert codes(header + PAD_EOS.format(comment="")) == expected


def test_syntax_errors_cannot_be_suppressed_or_deselected():
    source = "# mllint: noqa\nx = (\n"
    assert codes(source, Settings(select=("MLL3",))) == ["MLL902"]


def test_selection_resolution():
    rules = default_registry().rules
    assert "MLL101" in enabled_codes(Settings(), rules)
    assert "MLL901" not in enabled_codes(Settings(), rules)  # off by default
    assert "MLL901" in enabled_codes(Settings(extend_select=("MLL901",)), rules)
    chosen = enabled_codes(Settings(select=("MLL30",), ignore=("MLL301", "MLL303", "MLL304", "MLL305")), rules)
    assert "MLL302" in chosen and all(c.startswith("MLL30") for c in chosen)
    assert not {"MLL301", "MLL303", "MLL304", "MLL305"} & set(chosen)
    # A prefix selects every rule under it, off-by-default ones included (as ruff's selectors do).
    assert enabled_codes(Settings(select=("MLL3",)), rules) == sorted(
        code for code, rule in rules.items() if code.startswith("MLL3") and not rule.preview)
    assert "MLL901" not in enabled_codes(Settings(), rules)
    # The more specific selector wins; on a tie, ignore wins.
    assert "MLL101" in enabled_codes(Settings(select=("MLL101",), ignore=("MLL1",)), rules)
    assert "MLL101" not in enabled_codes(Settings(select=("MLL1",), ignore=("MLL1",)), rules)
    assert "MLL901" in enabled_codes(Settings(select=("ALL",)), rules)


def test_per_file_ignores(tmp_path):
    settings = Settings(per_file_ignores=(("tests/**", ("MLL1",)),), root=str(tmp_path))
    source = PAD_EOS.format(comment="")
    assert codes(source, settings) == ["MLL101"]
    assert lint_source(source, str(tmp_path / "tests" / "x.py"), settings) == []


def test_target_version_outside_premise_disables_rule():
    source = "from torch import nn\nm = nn.Transformer()\nm(s, t, memory_mask=src_padding_mask)\n"
    assert codes(source) == ["MLL302"]
    assert codes(source, Settings(target_versions={"torch": Version("1.0")})) == []


class _Broken(Rule):
    """## What it does\nx\n## Why is this bad?\nx\n## Example\nx\n## Use instead\nx\n## References\nx.py"""

    code = "MLL998"
    name = "broken-for-tests"
    summary = "raises"
    triggers = (("tokenizer",),)
    VALID = (Valid("x = 1\n"),)
    INVALID = (Invalid("tokenizer\n"),)

    def check(self, ctx):
        raise ZeroDivisionError("boom")


class _BadFix(Rule):
    """## What it does\nx\n## Why is this bad?\nx\n## Example\nx\n## Use instead\nx\n## References\nx.py"""

    code = "MLL997"
    name = "bad-fix-for-tests"
    summary = "fixes badly"
    triggers = (("tokenizer",),)

    def check(self, ctx):
        for name in ctx.nodes(cst.Name):
            if name.value == "tokenizer":
                yield ctx.report(name, "bad", fix=ctx.fix("break it", Applicability.SAFE, ctx.replace(name, "(")))


def _registry(*extra):
    return Registry([*default_registry(), *extra])


def test_a_crashing_rule_is_contained():
    registry = _registry(_Broken)
    source = PAD_EOS.format(comment="")
    found = lint_source(source, "t.py", Settings(select=("MLL101", "MLL998")), registry)
    assert [d.code for d in found] == ["MLL999", "MLL101"]
    assert "MLL998 (broken-for-tests)" in found[0].message and "ZeroDivisionError" in found[0].message
    assert "report" in found[0].message


def test_a_fix_that_breaks_the_code_is_not_applied():
    registry = _registry(_BadFix)
    source = "tokenizer = 1\n"
    result = fix_source(source, "t.py", Settings(select=("MLL997",)), registry=registry)
    assert result.source == source and not result.applied
    assert any(d.code == "MLL999" and "MLL997" in d.message for d in result.remaining)


def test_unsafe_fixes_need_opt_in():
    source = "from torch import nn\nm = nn.Transformer()\nm(s, t, memory_mask=src_padding_mask)\n"
    assert fix_source(source, "t.py", Settings()).source == source
    fixed = fix_source(source, "t.py", Settings(), unsafe=True)
    assert "memory_key_padding_mask=src_padding_mask" in fixed.source
    assert [d.code for d in fixed.applied] == ["MLL302"] and fixed.remaining == ()
    assert fix_source(source, "t.py", Settings(unsafe_fixes=True)).source == fixed.source


def test_suppressed_findings_are_not_fixed():
    source = "from torch import nn\nm = nn.Transformer()\nm(s, t, memory_mask=src_padding_mask)  # noqa: MLL302\n"
    assert fix_source(source, "t.py", Settings(), unsafe=True).source == source


def test_overlapping_fixes_are_deferred_to_the_next_pass():
    from mllint.core.diagnostic import Diagnostic, Edit, Fix, Location, Severity

    def diag(start, end, content):
        loc = Location(1, start + 1)
        edit = Edit(start, end, content, loc, Location(1, end + 1))
        return Diagnostic("MLL100", "x", "m", Severity.ERROR, loc, loc, Fix("f", Applicability.SAFE, (edit,)))

    text, used = apply_fixes("abcdef", [diag(0, 3, "X"), diag(2, 4, "Y"), diag(4, 6, "Z")], unsafe=False)
    assert text == "XdZ" and len(used) == 2


def test_diagnostics_are_sorted_and_carry_noqa_rows():
    source = (
        "from transformers import DataCollatorForLanguageModeling\n"
        "tok.pad_token = \\\n    tok.eos_token\n"
        "collator = DataCollatorForLanguageModeling(tok, mlm=False)\n"
    )
    (diag,) = lint_source(source, "t.py", Settings())
    assert diag.location.row == 2 and diag.noqa_row == 3  # a comment cannot follow the backslash
    assert codes(source.replace("tok.eos_token\n", "tok.eos_token  # noqa: MLL101\n", 1)) == []


def test_syntax_warnings_of_checked_code_are_not_printed():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lint_source("x = 1if y else 2\n", "t.py", Settings()) == []
    assert not [w for w in caught if issubclass(w.category, SyntaxWarning)]


def test_a_finding_can_be_more_severe_than_its_rule():
    """MLL202 is a warning, but an error for encoder-decoder models from transformers 5.2, which
    no longer infer their attention mask (the message names the version and where it came from)."""
    from mllint.core.diagnostic import Severity

    source = ('from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n'
              'tok = AutoTokenizer.from_pretrained("t5-small")\n'
              'model = AutoModelForSeq2SeqLM.from_pretrained("t5-small")\n'
              'batch = tok(["a", "bb"], padding=True, return_tensors="pt")\n'
              'out = model.generate(batch["input_ids"])\n')
    settings = Settings(select=("MLL202",), target_versions={"transformers": Version("5.2.0")},
                        version_sources={"transformers": "requirements.txt:1"})
    (found,) = lint_source(source, "t.py", settings)
    assert found.severity is Severity.ERROR
    assert "transformers 5.2.0 (requirements.txt:1)" in found.message
    decoder_only = source.replace("AutoModelForSeq2SeqLM", "AutoModelForCausalLM").replace("t5-small", "gpt2")
    (warning,) = lint_source(decoder_only, "t.py", settings)
    assert warning.severity is Severity.WARNING
