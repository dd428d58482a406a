from __future__ import annotations

from mllint.core.diagnostic import Severity
from mllint.core.rule import SystemRule


class UndecodableFile(SystemRule):
    """## What it does
    Reports a file whose bytes cannot be decoded with its declared encoding (a PEP 263
    `# -*- coding: ... -*-` cookie, a UTF-8 byte order mark, or UTF-8 by default), or that
    declares an encoding Python does not know. Always reported.

    ## Why is this bad?
    Python itself refuses to import such a file, and mllint cannot check it.

    ## Example
    A file saved as Latin-1 with a `é` in a comment and no encoding cookie.

    ## Use instead
    Save the file as UTF-8, or declare its encoding on the first or second line:
    ```python
    # -*- coding: latin-1 -*-
    ```

    ## References
    - PEP 263: https://peps.python.org/pep-0263/
    """

    code = "MLL903"
    name = "undecodable-file"
    summary = "the file's bytes cannot be decoded as Python source"
    severity = Severity.ERROR
    source_cases = False  # reported by the file reader, before there is any text
