"""mllint's fixes as libcst codemod commands, one per fixable rule plus ``FixAll``::

    python -m libcst.tool codemod -x mllint.codemods.PadTokenIsEos --no-format --unsafe-fixes src/
    python -m libcst.tool codemod -x mllint.codemods.FixAll --no-format src/

Commands are named after the rule classes (and reachable by code, ``mllint.codemods.MLL101``);
they are generated from the rule registry when this module is imported, so every rule that can
fix (third-party packs included) has one. See ``mllint.integrations.codemods`` for how they work.
"""

from __future__ import annotations

from mllint.integrations.codemods import FixAll, MllintCodemod, generate

_COMMANDS = generate(__name__)
globals().update(_COMMANDS)

__all__ = ["FixAll", "MllintCodemod", *sorted(_COMMANDS)]
