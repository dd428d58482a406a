from __future__ import annotations

from mllint.core.diagnostic import Severity
from mllint.core.rule import Invalid, SystemRule, Valid


class InvalidSyntax(SystemRule):
    """## What it does
    Reports a file that is not valid Python (or a notebook cell that is not), with the line and
    column where parsing stopped. Always reported: it cannot be deselected or suppressed. Exclude
    the file (`extend-exclude`) if it is meant to be something else.

    ## Why is this bad?
    mllint cannot check what it cannot parse, so every other rule is silent on this file.

    ## Example
    ```python
    def train(model:
        ...
    ```

    ## Use instead
    ```python
    def train(model):
        ...
    ```

    ## References
    - https://docs.python.org/3/reference/grammar.html
    """

    code = "MLL902"
    name = "invalid-syntax"
    summary = "the file is not valid Python"
    severity = Severity.ERROR
    VALID = (Valid("def train(model):\n    return model\n"),)
    INVALID = (
        Invalid("def train(model:\n    return model\n", line=1),
        Invalid("x = 1\nprint 'hello'\n", line=2),
        Invalid("x = 1\x00\n", line=1, message="null byte"),
    )
