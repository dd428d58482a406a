"""Settings: what to check, how, and where they came from.

``Settings`` is a plain value (the pure core takes one); ``load_config``/``ConfigResolver`` find
and validate ``[tool.mllint]`` in ``pyproject.toml`` or the whole of ``mllint.toml``/``.mllint.toml``.
Every mistake in a config file is a ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from pathspec import PathSpec
from pathspec import util as pathspec_util

from mllint.versions import canonical_package
from mllint.versions.pins import PinFinder, with_pins

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

CONFIG_FILES = ("mllint.toml", ".mllint.toml", "pyproject.toml")

DEFAULT_EXCLUDE: Tuple[str, ...] = (
    ".bzr", ".direnv", ".eggs", ".git", ".git-rewrite", ".hg", ".ipynb_checkpoints",
    ".mypy_cache", ".nox", ".pants.d", ".pyenv", ".pytest_cache", ".pytype", ".ruff_cache",
    ".mllint_cache", ".svn", ".tox", ".venv", ".vscode", "__pycache__", "__pypackages__", "_build",
    "buck-out", "build", "dist", "node_modules", "site-packages", "venv",
)


class ConfigError(Exception):
    """A mistake in configuration or on the command line: one line, exit code 2."""


# pathspec >= 0.12 names gitignore semantics "gitignore" (1.x deprecates "gitwildmatch").
_GITIGNORE = "gitignore" if "gitignore" in getattr(pathspec_util, "_registered_patterns", {}) else "gitwildmatch"


@functools.lru_cache(maxsize=1024)
def _compiled(patterns: Tuple[str, ...]) -> PathSpec:
    return PathSpec.from_lines(_GITIGNORE, patterns)


def gitignore_spec(lines: Iterable[str]) -> PathSpec:
    """A gitignore-style matcher (cached: the same pattern lists recur for every file)."""
    return _compiled(tuple(lines))


@dataclass(frozen=True)
class Settings:
    select: Optional[Tuple[str, ...]] = None  # None: the default rule set
    extend_select: Tuple[str, ...] = ()
    ignore: Tuple[str, ...] = ()
    per_file_ignores: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    exclude: Tuple[str, ...] = DEFAULT_EXCLUDE
    extend_exclude: Tuple[str, ...] = ()
    respect_gitignore: bool = True
    force_exclude: bool = False
    target_versions: Mapping[str, Version] = field(default_factory=dict)
    # package -> where its target version came from (``--target-version``, a config file, a pin
    # such as ``requirements.txt:3``); packages set explicitly are never overridden by pins.
    version_sources: Mapping[str, str] = field(default_factory=dict)
    # Packages whose target version is a project pin (a nearer pin may replace it), not explicit.
    pinned_packages: Tuple[str, ...] = ()
    unsafe_fixes: bool = False
    preview: bool = False
    rule_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Directory relative globs are matched against; the config file that set these values.
    root: Optional[str] = None
    config_file: Optional[str] = None
    # Where the result cache lives (``cache-dir``; None: ``.mllint_cache`` in ``root``, else in
    # the current directory).
    cache_dir: Optional[str] = None
    # False: run every selected rule on every file, without the text prefilter and the ``ast``
    # triage (``--no-triage``; for tests and the benchmark: results must be identical).
    triage: bool = True

    def with_changes(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    def relative(self, path: str) -> str:
        """``path`` relative to the settings' root, with forward slashes, for glob matching."""
        base = self.root or os.getcwd()
        try:
            rel = os.path.relpath(os.path.abspath(path), base)
        except ValueError:  # another drive on Windows
            rel = path
        if rel.startswith(".."):
            rel = os.path.abspath(path)
        return rel.replace(os.sep, "/")

    def is_excluded(self, path: str, is_dir: bool = False) -> bool:
        rel = self.relative(path)
        if rel == ".":  # the root itself (a pattern such as `.*` would match `./`)
            return False
        if is_dir:
            rel += "/"
        return gitignore_spec(self.exclude + self.extend_exclude).match_file(rel)

    def ignored_for(self, path: str) -> FrozenSet[str]:
        """Codes (and prefixes) ignored for ``path`` through ``per-file-ignores``."""
        if not self.per_file_ignores:
            return frozenset()
        rel = self.relative(path)
        out: set = set()
        for pattern, codes in self.per_file_ignores:
            if gitignore_spec([pattern]).match_file(rel):
                out.update(codes)
        return frozenset(out)


# -- selection ---------------------------------------------------------------------------------

def _specificity(selector: str) -> int:
    return 0 if selector == "ALL" else len(selector)


def _matches(selector: str, code: str) -> bool:
    return selector == "ALL" or code.startswith(selector)


def validate_selectors(selectors: Iterable[str], known: Iterable[str], where: str) -> None:
    codes = list(known)
    for selector in selectors:
        if selector != "ALL" and not any(code.startswith(selector) for code in codes):
            raise ConfigError(f"unknown rule selector `{selector}` in {where}")


def enabled_codes(settings: Settings, rules: Mapping[str, Any], path: Optional[str] = None) -> List[str]:
    """The codes enabled for ``path``: ruff's resolution (the most specific selector wins; on a
    tie, ``ignore`` wins). Off-by-default rules need a selector that names them or a prefix of
    them; preview rules also need ``preview``."""
    select = settings.select
    selectors = list(select) if select is not None else []
    selectors += list(settings.extend_select)
    ignores = list(settings.ignore)
    if path is not None:
        ignores += list(settings.ignored_for(path))
    out = []
    for code, rule in rules.items():
        if rule.preview and not settings.preview:
            continue
        chosen = [s for s in selectors if _matches(s, code)]
        best_select = max((_specificity(s) for s in chosen), default=-1)
        if select is None and rule.default_enabled and best_select < 0:
            best_select = 0  # in the default set
        best_ignore = max((_specificity(s) for s in ignores if _matches(s, code)), default=-1)
        if best_select >= 0 and best_select > best_ignore:
            out.append(code)
    return out


def premise_holds(rule: Any, settings: Settings) -> bool:
    from mllint.versions import resolve

    for package, spec in rule.premise.items():
        version = resolve(package, settings.target_versions, settings.version_sources)[0]
        if version is not None and version not in SpecifierSet(spec, prereleases=True):
            return False
    return True


# -- configuration files -----------------------------------------------------------------------

_LIST_KEYS = ("select", "extend-select", "ignore", "exclude", "extend-exclude")
_BOOL_KEYS = ("respect-gitignore", "force-exclude", "unsafe-fixes", "preview")
KNOWN_KEYS = _LIST_KEYS + _BOOL_KEYS + ("per-file-ignores", "target-versions", "rules", "cache-dir")


def parse_version(text: Any, where: str) -> Version:
    try:
        return Version(str(text))
    except InvalidVersion:
        raise ConfigError(f"invalid version `{text}` in {where}") from None


def normalize_codes(values: Iterable[str]) -> Tuple[str, ...]:
    return tuple(v.strip().upper() if v.strip().upper() != "ALL" else "ALL" for v in values if v.strip())


def settings_from_table(table: Mapping[str, Any], source: str, root: Optional[str],
                        base: Optional[Settings] = None) -> Settings:
    """Validate one ``[tool.mllint]`` table and fold it over ``base``."""
    from mllint.core.registry import default_registry

    registry = default_registry()
    settings = base or Settings()
    changes: Dict[str, Any] = {"root": root, "config_file": source}
    for key, value in table.items():
        where = f"`{key}` of {source}"
        if key not in KNOWN_KEYS:
            hint = ""
            if key.replace("_", "-") in KNOWN_KEYS:
                hint = f" (did you mean `{key.replace('_', '-')}`?)"
            raise ConfigError(f"unknown key `{key}` in {source}{hint}")
        if key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings")
            attr = key.replace("-", "_")
            if key in ("select", "extend-select", "ignore"):
                codes = normalize_codes(value)
                validate_selectors(codes, registry.rules, where)
                changes[attr] = codes
            else:
                changes[attr] = tuple(value)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false")
            changes[key.replace("-", "_")] = value
        elif key == "per-file-ignores":
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table of glob = [codes]")
            entries = []
            for pattern, codes in value.items():
                if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
                    raise ConfigError(f"`per-file-ignores.\"{pattern}\"` of {source} must be a list of codes")
                normalized = normalize_codes(codes)
                validate_selectors(normalized, registry.rules, f"`per-file-ignores` of {source}")
                entries.append((pattern, normalized))
            changes["per_file_ignores"] = tuple(entries)
        elif key == "target-versions":
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a table of package = \"version\"")
            changes["target_versions"] = {
                canonical_package(pkg): parse_version(ver, f"`target-versions.{pkg}` of {source}")
                for pkg, ver in value.items()
            }
            changes["version_sources"] = {
                pkg: f"target-versions in {_display_path(source)}" for pkg in changes["target_versions"]}
        elif key == "rules":
            changes["rule_options"] = validate_rule_options(value, source, registry)
        elif key == "cache-dir":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where} must be a directory path (a string)")
            base = root or os.getcwd()  # relative to the config file's directory
            changes["cache_dir"] = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    return settings.with_changes(**changes)


def _display_path(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path


def validate_rule_options(value: Any, source: str, registry: Any) -> Dict[str, Dict[str, Any]]:
    if not isinstance(value, dict):
        raise ConfigError(f"`rules` of {source} must be a table of rule tables")
    out: Dict[str, Dict[str, Any]] = {}
    for code, options in value.items():
        rule = registry.get(code)
        if rule is None:
            raise ConfigError(f"unknown rule `{code}` in `rules` of {source}")
        if not isinstance(options, dict):
            raise ConfigError(f"`rules.{code}` of {source} must be a table")
        known = {opt.name: opt for opt in rule.options}
        for name, option_value in options.items():
            option = known.get(name)
            if option is None:
                names = ", ".join(sorted(known)) or "none"
                raise ConfigError(
                    f"unknown option `{name}` for {rule.code} in {source} (options: {names})")
            problem = option.validate(option_value)
            if problem:
                raise ConfigError(f"`rules.{code}.{name}` of {source} must be {problem}")
        out[rule.code] = dict(options)
    return out


def read_config_file(path: Path) -> Optional[Mapping[str, Any]]:
    """The mllint table of ``path``, or None when a pyproject.toml has no ``[tool.mllint]``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if path.name == "pyproject.toml":
        tool = data.get("tool", {})
        table = tool.get("mllint") if isinstance(tool, dict) else None
        if table is None:
            return None
        if not isinstance(table, dict):
            raise ConfigError(f"`tool.mllint` of {path} must be a table")
        return table
    return data


def load_config(path: Path, base: Optional[Settings] = None) -> Settings:
    table = read_config_file(path)
    if table is None:
        raise ConfigError(f"{path} has no [tool.mllint] table")
    return settings_from_table(table, str(path), str(path.parent.resolve()), base)


def find_config(start: Path) -> Optional[Path]:
    """The nearest config file at or above ``start`` (a file or a directory)."""
    directory = start if start.is_dir() else start.parent
    directory = directory.resolve()
    for candidate_dir in (directory, *directory.parents):
        for name in CONFIG_FILES:
            candidate = candidate_dir / name
            try:
                present = candidate.is_file()
            except OSError:  # a directory mllint may not look into (it is reported, MLL904)
                continue
            if present:
                if name == "pyproject.toml" and read_config_file(candidate) is None:
                    continue
                return candidate
    return None


class ConfigResolver:
    """Settings per directory: ``--config`` for everything, or the nearest config file, with the
    command line's overrides applied on top; cached per directory."""

    def __init__(self, overrides: Mapping[str, Any], config_file: Optional[Path] = None,
                 isolated: bool = False) -> None:
        self.overrides = dict(overrides)
        self.isolated = isolated
        self._fixed: Optional[Settings] = None
        if isolated:
            self._fixed = self._apply(Settings())
        elif config_file is not None:
            self._fixed = self._apply(load_config(config_file))
        self._by_config: Dict[Optional[Path], Settings] = {}
        self._by_dir: Dict[Path, Settings] = {}
        self._by_raw: Dict[Path, Settings] = {}  # by the path as given, before resolving
        self._pins = PinFinder()

    def _apply(self, settings: Settings) -> Settings:
        changes = dict(self.overrides)
        if "extend_select" in changes:
            changes["extend_select"] = settings.extend_select + changes["extend_select"]
        if "ignore" in changes:
            changes["ignore"] = settings.ignore + changes["ignore"]
        if "extend_exclude" in changes:
            changes["extend_exclude"] = settings.extend_exclude + changes["extend_exclude"]
        if "target_versions" in changes:
            given = changes["target_versions"]
            changes["target_versions"] = {**settings.target_versions, **given}
            changes["version_sources"] = {**settings.version_sources, **{p: "--target-version" for p in given}}
        return settings.with_changes(**changes)

    def for_path(self, path: Path) -> Settings:
        raw = self._by_raw.get(path)  # a file's own path seen before (runner asks twice)
        if raw is not None:
            return raw
        directory = path if path.is_dir() else path.parent
        unresolved = directory
        cached = self._by_raw.get(unresolved)  # resolving costs a stat per path component
        if cached is not None:
            self._by_raw[path] = cached
            return cached
        try:
            directory = directory.resolve()
        except OSError:
            pass
        cached = self._by_dir.get(directory)
        if cached is not None:
            self._by_raw[unresolved] = self._by_raw[path] = cached
            return cached
        if self._fixed is not None:
            settings = self._fixed
        else:
            config = find_config(directory)
            settings = self._by_config.get(config)
            if settings is None:
                settings = self._apply(load_config(config) if config else Settings())
                self._by_config[config] = settings
        if not self.isolated:  # the project's pins, for packages the configuration leaves open
            settings = with_pins(settings, self._pins.pins(directory))
        self._by_dir[directory] = settings
        self._by_raw[unresolved] = self._by_raw[path] = settings
        return settings
