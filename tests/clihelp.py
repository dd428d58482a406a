"""Helpers for the end-to-end tests: run the real ``mllint`` command in a directory.

Every run goes through ``python -m mllint`` in a subprocess (standard output is a pipe, so the
default output format is ``concise``), and no run may print a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

# One MLL101 finding (row 3, column 1); its unsafe fix adds a pad token and resizes the model.
MLL101_SRC = """\
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling
tokenizer = AutoTokenizer.from_pretrained("m")
tokenizer.pad_token = tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained("m")
collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
"""
MLL101_FIXED = """\
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling
tokenizer = AutoTokenizer.from_pretrained("m")
tokenizer.add_special_tokens({"pad_token": "<pad>"})
model = AutoModelForCausalLM.from_pretrained("m")
model.resize_token_embeddings(len(tokenizer))
collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
"""

# One MLL302 finding (row 3, column 23); its unsafe fix renames the keyword.
MLL302_SRC = """\
from torch import nn
model = nn.Transformer()
out = model(src, tgt, memory_mask=src_padding_mask)
"""
MLL302_FIXED = MLL302_SRC.replace("memory_mask=", "memory_key_padding_mask=")

# One MLL901 finding (off by default: needs --extend-select MLL901); its fix is safe.
MLL901_SRC = "x = 1  # noqa: MLL101\n"
MLL901_FIXED = "x = 1\n"

# MLL101 only when trl < 0.16 is the target.
SFT_SRC = """\
from trl import SFTTrainer
tokenizer.pad_token = tokenizer.eos_token
trainer = SFTTrainer(model=m, train_dataset=d)
"""

CLEAN_SRC = "import torch\nx = torch.zeros(3)\n"

_FINDING = re.compile(r"^(?P<path>.+?):(?P<row>\d+):(?P<col>\d+): (?P<code>MLL\d{3}) (?P<fix>\[\*\] )?(?P<message>.+)$")


def run(args: Sequence[Union[str, os.PathLike]], cwd: Union[str, os.PathLike],
        input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run ``mllint ARGS`` in ``cwd``; text in and out. Fails the test on any traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLLINT_DEBUG", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "mllint", *map(str, args)],
        cwd=str(cwd), input=input, capture_output=True, text=True, encoding="utf-8",
        env=env, timeout=120,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def write(root: Path, files: Dict[str, Union[str, bytes]]) -> None:
    """Create ``files`` (relative path -> text or bytes) below ``root``."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode("utf-8"))  # no newline translation


def findings(stdout: str) -> List[Tuple[str, int, int, str]]:
    """(path, row, column, code) of every concise finding line; any other line fails."""
    out = []
    for line in stdout.splitlines():
        match = _FINDING.match(line)
        assert match, f"not a concise finding line: {line!r}"
        out.append((match["path"], int(match["row"]), int(match["col"]), match["code"]))
    return out


def codes_by_path(stdout: str) -> List[Tuple[str, str]]:
    """(path with forward slashes, code) of every finding, in output order."""
    return [(path.replace(os.sep, "/"), code) for path, _, _, code in findings(stdout)]


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, nothing on stdout, one ``mllint: error:`` line naming every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mllint: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, proc.stderr)
