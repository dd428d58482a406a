from __future__ import annotations

from mllint.core.diagnostic import Severity
from mllint.core.rule import SystemRule


class UnreadableFile(SystemRule):
    """## What it does
    Reports a file that could not be read or written back: permission denied, a file that
    vanished or changed during the run, a path that is not a regular file. The other files are
    still checked. Always reported.

    ## Why is this bad?
    The file was not checked (or its fixes were not written), so findings may be missing.

    ## Example
    ```text
    secret.py:1:1: MLL904 cannot read the file: Permission denied
    ```

    ## Use instead
    Make the file readable, or exclude it (`extend-exclude`).

    ## References
    - `mllint --help` (paths and exclusion)
    """

    code = "MLL904"
    name = "unreadable-file"
    summary = "the file could not be read or written"
    severity = Severity.ERROR
    source_cases = False  # reported by the file reader, before there is any text
