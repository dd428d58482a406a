from __future__ import annotations

from mllint.core.diagnostic import Severity
from mllint.core.rule import SystemRule


class InternalError(SystemRule):
    """## What it does
    Reports a bug in mllint: a rule raised an exception on this file, or a fix produced code that
    does not parse (the fix is then not applied). The other rules and files are still checked,
    and the run exits with status 2.

    ## Why is this bad?
    The rule named in the message could not finish on this file, so a finding may be missing.

    ## Example
    ```text
    train.py:1:1: MLL999 internal error in MLL302 (padding-mask-as-memory-mask) on train.py: ...
    ```

    ## Use instead
    Please report it with the file (or a reduced version of it) and `mllint --version`.
    Meanwhile, `--ignore` the rule named in the message for that file.

    ## References
    - `mllint --version`
    """

    code = "MLL999"
    name = "internal-error"
    summary = "mllint failed on this file (a bug: please report it)"
    severity = Severity.ERROR
    source_cases = False  # reported by the engine on a crash, not by any source text
