from __future__ import annotations

from typing import Iterator, Optional

import libcst as cst
from packaging.version import Version

from mllint.analysis.instances import UNKNOWN, Instances
from mllint.core.context import Context
from mllint.core.diagnostic import Applicability, Diagnostic, Fix, Severity
from mllint.core.rule import Invalid, Rule, Valid

METHOD = "as_target_tokenizer"
# transformers `tokenization_utils_base.py`: `text_target` added to `__call__` and
# `as_target_tokenizer` deprecated in 4.22.0; the method is gone in 5.0.0 (and 5.23.0).
_REMOVED = Version("5.0")


class AsTargetTokenizerRemoved(Rule):
    """## What it does
    Checks for `with tokenizer.as_target_tokenizer():` on a Hugging Face tokenizer (one the file
    loads with `AutoTokenizer.from_pretrained(...)` or another tokenizer class), the way
    translation and summarization notebooks tokenized their labels.

    ## Why is this bad?
    transformers 4.22.0 added the `text_target` argument to the tokenizer's `__call__`
    (`tokenization_utils_base.py`, `PreTrainedTokenizerBase.__call__`) and deprecated
    `as_target_tokenizer` ("`as_target_tokenizer` is deprecated and will be removed in v5 of
    Transformers"); transformers 5.0.0 removed the method, so the `with` statement raises
    `AttributeError`. Both spellings do the same work: the context manager calls
    `_switch_to_target_mode()` around the calls in its body, and `__call__(text_target=...)`
    calls `_switch_to_target_mode()`, encodes the targets and switches back (4.57.6), returning
    the target encoding when no `text` is given. For tokenizers with a separate target
    vocabulary or language code (Marian, mBART, NLLB), the target mode is what makes the labels
    right, so dropping the `with` without `text_target=` silently produces source-language
    labels.

    The premise is transformers >= 4.22 (where `text_target` exists): a deprecation up to 4.57,
    an error from 5.0 on.

    ## Example
    ```python
    with tokenizer.as_target_tokenizer():
        labels = tokenizer(targets, max_length=128, truncation=True)
    ```

    ## Use instead
    ```python
    labels = tokenizer(text_target=targets, max_length=128, truncation=True)
    ```
    or `model_inputs = tokenizer(inputs, text_target=targets, max_length=128, truncation=True)`.

    ## Fix safety
    When the `with` block is exactly one assignment of the same tokenizer called on one
    positional text (plus keyword options), the fix rewrites it to
    `labels = tokenizer(text_target=text, ...)`, which encodes the same text in the same target
    mode: it is safe. Any other body (several statements, a `text_pair`, comments) gets no fix,
    since the calls to move into `text_target=` must be chosen by hand.

    ## References
    - transformers `tokenization_utils_base.py`, `PreTrainedTokenizerBase.as_target_tokenizer`
      and `__call__` (4.21.3, 4.22.0, 4.57.6, 5.0.0, 5.23.0)
    - https://huggingface.co/docs/transformers/tasks/translation
    """

    code = "MLL603"
    name = "as-target-tokenizer-removed"
    summary = "`tokenizer.as_target_tokenizer()` is deprecated since transformers 4.22 and removed in 5.0"
    severity = Severity.ERROR
    tags = ("transformers", "migration", "versions", "tokenization")
    triggers = ((METHOD,),)
    # Triage: checked on the stdlib `ast` tree before libcst parses (mllint.core.triage).
    requires = ((f"call:{METHOD}",), ("import:transformers",))
    premise = {"transformers": ">=4.22"}
    VALID = (
        Valid("""
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("t5-small")
            labels = tokenizer(text_target=targets, max_length=128, truncation=True)
            """),
        # Before 4.22 there is no `text_target`.
        Valid("""
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("t5-small")
            with tokenizer.as_target_tokenizer():
                labels = tokenizer(targets)
            """, settings={"target_versions": {"transformers": "4.21.3"}}),
        # Unknown receiver: a tokenizer of another library, or a parameter.
        Valid("""
            import transformers
            def encode(tok, targets):
                with tok.as_target_tokenizer():
                    return tok(targets)
            """),
    )
    INVALID = (
        Invalid(
            """
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("Helsinki-NLP/opus-mt-en-ro")
            def preprocess_function(examples):
                inputs = [ex["en"] for ex in examples["translation"]]
                targets = [ex["ro"] for ex in examples["translation"]]
                model_inputs = tokenizer(inputs, max_length=128, truncation=True)
                with tokenizer.as_target_tokenizer():
                    labels = tokenizer(targets, max_length=128, truncation=True)
                model_inputs["labels"] = labels["input_ids"]
                return model_inputs
            """,
            line=7,
            message="transformers 5.23.0 (assumed",
            fix="""
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained("Helsinki-NLP/opus-mt-en-ro")
            def preprocess_function(examples):
                inputs = [ex["en"] for ex in examples["translation"]]
                targets = [ex["ro"] for ex in examples["translation"]]
                model_inputs = tokenizer(inputs, max_length=128, truncation=True)
                labels = tokenizer(text_target=targets, max_length=128, truncation=True)
                model_inputs["labels"] = labels["input_ids"]
                return model_inputs
            """,
            applicability=Applicability.SAFE,
        ),
        Invalid(
            """
            from transformers import MarianTokenizer
            tok = MarianTokenizer.from_pretrained("Helsinki-NLP/opus-mt-en-de")
            with tok.as_target_tokenizer():
                labels = tok(batch["de"], padding=True)
                decoded = tok.batch_decode(labels["input_ids"])
            """,
            line=3,
            message="deprecated",
            severity=Severity.WARNING,
            settings={"target_versions": {"transformers": "4.22.0"}},
        ),
    )

    def check(self, ctx: Context) -> Iterator[Diagnostic]:
        version = ctx.target_version("transformers")
        if version is None:
            return
        fact = ctx.version_fact("transformers")
        instances = ctx.get(Instances)
        for call in ctx.nodes(cst.Call):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == METHOD):
                continue
            kinds = instances.kinds(func.value, call)
            if not kinds or UNKNOWN in kinds or not all(
                    k.startswith("transformers.") and "Tokenizer" in k.rsplit(".", 1)[-1] for k in kinds):
                continue
            tokenizer = ctx.code(func.value)
            if version >= _REMOVED:
                message = (f"with {fact}, tokenizers have no `{METHOD}()` (deprecated in 4.22, removed "
                           f"in 5.0): this raises `AttributeError`; pass the labels as "
                           f"`{tokenizer}(text_target=...)`")
            else:
                message = (f"with {fact}, `{tokenizer}.{METHOD}()` is deprecated (since 4.22) and removed "
                           f"in 5.0; pass the labels as `{tokenizer}(text_target=...)`")
            yield ctx.report(call, message, fix=self._fix(ctx, call, tokenizer),
                             help=f"Use `{tokenizer}(text_target=targets, ...)` (or `text=` and "
                                  "`text_target=` in one call)",
                             severity=None if version >= _REMOVED else Severity.WARNING)

    @staticmethod
    def _fix(ctx: Context, call: cst.Call, tokenizer: str) -> Optional[Fix]:
        item = ctx.parent(call)
        with_node = ctx.parent(item) if isinstance(item, cst.WithItem) else None
        if not isinstance(with_node, cst.With) or len(with_node.items) != 1 or item.asname is not None \
                or not isinstance(with_node.body, cst.IndentedBlock) or len(with_node.body.body) != 1:
            return None
        line = with_node.body.body[0]
        if not isinstance(line, cst.SimpleStatementLine) or len(line.body) != 1 or line.leading_lines \
                or line.trailing_whitespace.comment is not None or with_node.body.header.comment is not None:
            return None
        assign = line.body[0]
        if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
            return None
        inner = assign.value
        if not isinstance(inner, cst.Call) or ctx.code(inner.func) != tokenizer or not inner.args:
            return None
        first, rest = inner.args[0], inner.args[1:]
        if first.keyword is not None or first.star or any(a.keyword is None for a in rest) \
                or any(a.keyword is not None and a.keyword.value.startswith("text") for a in rest):
            return None
        args = [f"text_target={ctx.code(first.value)}"]
        args += [ctx.code(a.with_changes(comma=cst.MaybeSentinel.DEFAULT)) for a in rest]
        replacement = f"{ctx.code(assign.targets[0].target)} = {tokenizer}({', '.join(args)})"
        start, _ = ctx.span(with_node)
        _, end = ctx.span(assign)
        return ctx.fix(f"Use `{tokenizer}(text_target=...)`", Applicability.SAFE,
                       ctx.edit(start, end, replacement))
