"""Integrations with other tools, each a thin layer over the pure core (``lint_source`` /
``fix_source``): ``flake8`` (the ``MLL`` plugin) and ``codemods`` (libcst codemod commands,
published as ``mllint.codemods``). The pre-commit hooks live in ``.pre-commit-hooks.yaml`` at
the repository root and run the ``mllint`` command itself.

Nothing here is imported by ``import mllint``; each module imports the core only when it is used.
"""
