"""The flake8 plugin: ``flake8 --select MLL`` reports what ``mllint`` reports.

Registered as entry point ``MLL`` in the group ``flake8.extension``. It lints the text flake8
has already read (``lines``), never the file system, with settings from ``[tool.mllint]`` (the
nearest ``pyproject.toml``/``mllint.toml`` above the file, through ``ConfigResolver``, as the
``mllint`` command does). Decisions:

- **Columns.** mllint's columns are 1-based, flake8 plugins report 0-based offsets and flake8
  prints offset + 1: the plugin yields ``column - 1``, so the printed column is mllint's.
- **noqa.** The core applies mllint's own suppressions (``# noqa``, ``# noqa: MLL101``,
  ``# mllint: noqa``), so the plugin reports exactly what ``mllint`` reports, file-level
  directives work, and MLL901 (unused noqa) knows which directives were used. flake8 then
  applies its own ``# noqa`` to what is left. Both read flake8's grammar with prefix matching
  (mllint also accepts ``#noqa`` without the space), so every directive flake8 honours on the
  reported line is honoured by the core already; flake8 adds only its rule that a directive
  anywhere in a multi-line statement covers all its lines. With ``--disable-noqa`` flake8
  reports everything, and so does the plugin: it hides every ``noqa`` comment from the core by
  overwriting it with text of the same length, so no position moves.
- **MLL902 (invalid syntax)** is not reported: flake8 reports E999 itself and does not even run
  AST plugins on such files. MLL999 (an internal error) is reported: it is a bug to see.
- **Selection.** ``[tool.mllint]`` decides which rules run (``select``, ``ignore``,
  ``per-file-ignores``, off-by-default rules such as MLL901 via ``extend-select``); flake8's
  ``--select``/``--ignore``/``--per-file-ignores`` then filter the reported codes as for any
  plugin. Which files are checked is flake8's business: mllint's ``exclude`` is not applied.
- **Options** (command line or flake8 config): ``--mllint-target-version PKG=VER[,PKG=VER]``
  (over ``target-versions`` of the config, as ``mllint --target-version``),
  ``--mllint-config FILE`` (use this file for every checked file, as ``mllint --config``) and
  ``--mllint-isolated`` (ignore mllint config files). Per-rule options are structured values
  and stay in ``[tool.mllint.rules.MLLxxx]``.

Importing this module imports nothing heavy (flake8 imports every plugin on each start, even for
``flake8 --version``); the core is loaded when the first file is checked.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterator, Optional, Sequence, Tuple

from mllint import __version__

if TYPE_CHECKING:  # pragma: no cover
    from mllint.settings import ConfigResolver

# flake8 reports syntax errors itself (E999) and never runs AST plugins on such files.
NOT_REPORTED = frozenset({"MLL902"})

_NOQA = re.compile("noqa", re.IGNORECASE)


def mask_noqa(source: str) -> str:
    """``source`` with every ``noqa`` inside a comment overwritten by text of the same length,
    so the core sees no directive while every row, column and offset stays the same."""
    if "noqa" not in source.lower():
        return source
    lines = io.StringIO(source).readlines()  # split exactly as tokenize reads them
    try:
        comments = [tok for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                    if tok.type == tokenize.COMMENT and "noqa" in tok.string.lower()]
    except (tokenize.TokenError, SyntaxError, ValueError):
        return source  # not tokenizable: the core suppresses nothing in such a file anyway
    for tok in comments:
        row, column = tok.start
        line = lines[row - 1]
        end = column + len(tok.string)
        lines[row - 1] = line[:column] + _NOQA.sub("n_qa", line[column:end]) + line[end:]
    return "".join(lines)


class MllintChecker:
    """flake8 AST plugin (flake8 classifies plugins by their parameters: ``tree`` makes it one;
    the tree itself is not used, the core parses the text with libcst)."""

    name = "mllint"
    version = __version__

    # Set by ``parse_options`` (flake8 calls it once per process, workers included).
    target_versions: ClassVar[Tuple[str, ...]] = ()
    config_file: ClassVar[Optional[str]] = None
    isolated: ClassVar[bool] = False
    disable_noqa: ClassVar[bool] = False
    _resolver: ClassVar[Optional["ConfigResolver"]] = None

    def __init__(self, tree: Any, filename: str, lines: Sequence[str]) -> None:
        self.filename = filename
        self.lines = lines

    @classmethod
    def add_options(cls, manager: Any) -> None:
        manager.add_option(
            "--mllint-target-version", default=[], parse_from_config=True,
            comma_separated_list=True, metavar="PKG=VER",
            help="Library versions the code targets, e.g. trl=0.15,transformers=4.46 "
                 "(over `target-versions` of [tool.mllint]).")
        manager.add_option(
            "--mllint-config", default=None, parse_from_config=True, normalize_paths=True,
            metavar="FILE",
            help="Use this mllint config file (pyproject.toml or mllint.toml) for every file "
                 "instead of the nearest one.")
        manager.add_option(
            "--mllint-isolated", default=False, action="store_true", parse_from_config=True,
            help="Ignore mllint's configuration files.")

    @classmethod
    def parse_options(cls, options: Any) -> None:
        cls.target_versions = tuple(getattr(options, "mllint_target_version", None) or ())
        cls.config_file = getattr(options, "mllint_config", None) or None
        cls.isolated = bool(getattr(options, "mllint_isolated", False))
        cls.disable_noqa = bool(getattr(options, "disable_noqa", False))
        cls._resolver = None
        if cls.config_file is not None or cls.target_versions:
            # A mistake in these options stops the run with one line, before any file is checked.
            from flake8.exceptions import ExecutionError

            from mllint.settings import ConfigError

            if cls.config_file is not None and not Path(cls.config_file).is_file():
                raise ExecutionError(f"mllint: config file `{cls.config_file}` (--mllint-config) does not exist")
            try:
                cls.resolver()
            except ConfigError as exc:
                raise ExecutionError(f"mllint: {exc}") from None

    @classmethod
    def _overrides(cls) -> Dict[str, Any]:
        from mllint.settings import ConfigError, parse_version
        from mllint.versions import canonical_package

        versions = {}
        for item in cls.target_versions:
            package, sep, version = item.partition("=")
            if not sep or not package.strip() or not version.strip():
                raise ConfigError(f"--mllint-target-version takes PKG=VER, not `{item}`")
            versions[canonical_package(package)] = parse_version(version.strip(), "--mllint-target-version")
        return {"target_versions": versions} if versions else {}

    @classmethod
    def resolver(cls) -> "ConfigResolver":
        """Settings per directory, built on first use (so ``flake8 --version`` loads nothing).
        A mistake in a config file stops flake8 with one line naming the file and key."""
        if cls._resolver is None:
            from mllint.settings import ConfigResolver

            cls._resolver = ConfigResolver(
                cls._overrides(), Path(cls.config_file) if cls.config_file else None,
                isolated=cls.isolated)
        return cls._resolver

    def run(self) -> Iterator[Tuple[int, int, str, type]]:
        from mllint.core.engine import lint_source
        from mllint.settings import ConfigError

        try:
            settings = self.resolver().for_path(Path(self.filename).absolute())
        except ConfigError as exc:  # one line naming the file and key, as `mllint` prints it
            from flake8.exceptions import ExecutionError

            raise ExecutionError(f"mllint: {exc}") from None
        source = "".join(self.lines)
        if self.disable_noqa:
            source = mask_noqa(source)
        for diag in lint_source(source, self.filename, settings):
            if diag.code in NOT_REPORTED:
                continue
            yield diag.location.row, diag.location.column - 1, f"{diag.code} {diag.message}", type(self)
