from __future__ import annotations

from mllint.core.diagnostic import Severity
from mllint.core.rule import SystemRule


class InvalidNotebook(SystemRule):
    """## What it does
    Reports a `.ipynb` file that is not a valid Jupyter notebook in nbformat 4: the file is not
    JSON, its top level is not an object, its `nbformat` is not 4, `cells` is not a list, a cell
    is not an object, or a code cell's `source` is neither a string nor a list of strings. Always
    reported; the other files are still checked. (A notebook whose bytes are not UTF-8 is MLL903.)

    ## Why is this bad?
    Jupyter cannot open such a file either (a merge conflict left in the JSON is the usual cause),
    and mllint cannot tell which text is code, so nothing in the notebook was checked.

    ## Example
    A notebook with merge-conflict markers inside its JSON:
    ```text
    <<<<<<< HEAD
       "source": ["tokenizer.pad_token = tokenizer.eos_token"]
    =======
       "source": ["tokenizer.pad_token = \\"<pad>\\""]
    >>>>>>> feature
    ```

    ## Use instead
    Resolve the conflict (`nbdime` merges notebooks cell by cell), or convert an old notebook to
    nbformat 4 with `jupyter nbconvert --to notebook --nbformat 4 old.ipynb`.

    ## References
    - The nbformat 4 schema: https://github.com/jupyter/nbformat/blob/main/nbformat/v4/nbformat.v4.schema.json
    - nbformat documentation: https://nbformat.readthedocs.io/en/latest/format_description.html
    """

    code = "MLL905"
    name = "invalid-notebook"
    summary = "the `.ipynb` file is not a valid nbformat 4 Jupyter notebook"
    severity = Severity.ERROR
    source_cases = False  # reported by the notebook reader, before there is any Python text
