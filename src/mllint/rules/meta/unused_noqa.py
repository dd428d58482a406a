from __future__ import annotations

from typing import Dict, Iterator, List, Set

from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Severity
from mllint.core.locator import Locator
from mllint.core.rule import Invalid, SystemRule, Valid
from mllint.core.suppression import NoqaDirective, Suppressions


class UnusedNoqa(SystemRule):
    """## What it does
    Checks for `# noqa` directives naming mllint codes (`MLL...`) that suppress nothing: the
    code is unknown, not enabled, or no such diagnostic is reported on that line.

    Only `MLL` codes are judged. A `# noqa` comment is shared with flake8 and ruff, so codes of
    other tools and blanket `# noqa` comments are left alone.

    ## Why is this bad?
    A stale suppression hides the next real finding on that line, and readers take it as a sign
    that something there is wrong.

    ## Example
    ```python
    tokenizer.pad_token = tokenizer.unk_token  # noqa: MLL101
    ```

    ## Use instead
    ```python
    tokenizer.pad_token = tokenizer.unk_token
    ```

    ## Fix safety
    The fix removes the unused codes, or the whole directive when none is left, and keeps codes
    of other tools. It is safe: comments do not change what the program does.

    ## References
    - ruff's RUF100, which this follows: https://docs.astral.sh/ruff/rules/unused-noqa/
    """

    code = "MLL901"
    name = "unused-noqa"
    summary = "`# noqa` directive naming an mllint code that suppresses nothing"
    severity = Severity.INFO
    default_enabled = False
    tags = ("suppression",)
    VALID = (
        Valid("tokenizer.pad_token = tokenizer.unk_token  # noqa: E501\n"),
        Valid("tokenizer.pad_token = tokenizer.unk_token  # noqa\n"),
        Valid("x = '# noqa: MLL101'\n"),
        Valid(
            """
            from transformers import DataCollatorForLanguageModeling
            tokenizer.pad_token = tokenizer.eos_token  # noqa: MLL101
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
            """,
            settings={"select": ("MLL101", "MLL901")},
        ),
    )
    INVALID = (
        Invalid(
            "tokenizer.pad_token = tokenizer.unk_token  # noqa: MLL101\n",
            message="unused `noqa` directive (unused: `MLL101`)",
            fix="tokenizer.pad_token = tokenizer.unk_token\n",
            applicability=Applicability.SAFE,
            settings={"select": ("MLL101", "MLL901")},
        ),
        Invalid(
            "x = 1  # noqa: E501, MLL302\n",
            fix="x = 1  # noqa: E501\n",
            applicability=Applicability.SAFE,
        ),
        Invalid(
            "x = 1  # type: ignore  # noqa: MLL777\n",
            message="unknown: `MLL777`",
            fix="x = 1  # type: ignore\n",
            applicability=Applicability.SAFE,
        ),
        Invalid(
            "x = 1  # noqa: E501, MLL302\n",
            message="non-enabled: `MLL302`",
            fix="x = 1  # noqa: E501\n",
            applicability=Applicability.SAFE,
            settings={"ignore": ("MLL302",)},
        ),
    )


def _fix(directive: NoqaDirective, keep: List[str], locator: Locator) -> Fix:
    source = locator.source
    if keep:
        content = "# noqa: " + ", ".join(keep)
        start, end = directive.start, directive.end
    else:
        comment = source[directive.comment_start:directive.comment_end]
        rel_start = directive.start - directive.comment_start
        rel_end = directive.end - directive.comment_start
        rest = (comment[:rel_start].rstrip() + " " + comment[rel_end:].lstrip()).strip()
        if rest in ("", "#"):
            start = directive.comment_start
            while start > 0 and source[start - 1] in " \t":
                start -= 1
            end, content = directive.comment_end, ""
        else:
            start, end = directive.comment_start, directive.comment_end
            content = rest if rest.startswith("#") else "# " + rest
    edit = Edit(start, end, content, locator.location(start), locator.location(end))
    return Fix("Remove the unused codes" if keep else "Remove the unused `noqa` directive",
               Applicability.SAFE, (edit,))


def unused_noqa_diagnostics(suppressions: Suppressions, used: Dict[int, Set[str]],
                            enabled: Set[str], registry, locator: Locator) -> Iterator[Diagnostic]:
    known = list(registry.rules)
    for row, directive in sorted(suppressions.lines.items()):
        if directive.codes is None:
            continue
        matched = used.get(row, set())
        unused: List[str] = []
        unknown: List[str] = []
        disabled: List[str] = []
        for code in directive.codes:
            if not code.startswith("MLL") or any(u.startswith(code) for u in matched):
                continue
            if not any(k.startswith(code) for k in known):
                unknown.append(code)
            elif not any(e.startswith(code) for e in enabled):
                disabled.append(code)
            else:
                unused.append(code)
        if not (unused or unknown or disabled):
            continue
        parts = []
        for label, codes in (("unused", unused), ("non-enabled", disabled), ("unknown", unknown)):
            if codes:
                parts.append(f"{label}: " + ", ".join(f"`{c}`" for c in codes))
        dropped = set(unused + unknown + disabled)
        keep = [c for c in directive.codes if c not in dropped]
        yield Diagnostic(
            code=UnusedNoqa.code,
            name=UnusedNoqa.name,
            message=f"unused `noqa` directive ({'; '.join(parts)})",
            severity=UnusedNoqa.severity,
            location=locator.location(directive.start),
            end_location=locator.location(directive.end),
            fix=_fix(directive, keep, locator),
            help="Remove the unused codes from the directive",
            noqa_row=row,
            url=UnusedNoqa.url(),
            start=directive.start,
            end=directive.end,
        )
