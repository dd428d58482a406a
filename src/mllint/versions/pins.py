"""Library versions a project pins: requirements files, ``pyproject.toml`` (PEP 621 and Poetry),
``setup.cfg``, ``setup.py`` (literal arguments of ``setup()``, read without running it) and a
notebook's ``%pip install`` / ``!pip install`` lines. A project that *is* one of the packages (a
vendored copy of transformers, a fork of trl) targets its own version: ``name``/``version`` of
``[project]``, ``[metadata]`` or ``setup()`` pin it exactly.

A pin is the *lowest* version its specifier allows (``>=4.46,<5`` -> 4.46; ``^4.46`` -> 4.46;
``~=0.15.2`` -> 0.15.2): premises mostly flip at a release, and the oldest version a project
admits is the one whose behaviour it must survive. A specifier with no lower bound (``<5``,
``*``, a URL) pins nothing.

The parsers are pure functions of a file's text; ``PinFinder`` looks up the pins of a directory:
for each package, the nearest directory (from the file upward, up to the repository root) whose
pin files name it wins, so every project of a monorepo resolves on its own.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from mllint.versions import TRACKED, canonical_package

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib


@dataclass(frozen=True)
class Pin:
    package: str  # canonical name (``lightning`` for ``pytorch-lightning``)
    version: Version  # the lowest version the specifier allows
    source: str  # ``requirements.txt:3``, ``pyproject.toml [project.dependencies]``...


def lowest_allowed(specifier: str) -> Optional[Version]:
    """The lowest version ``specifier`` (PEP 440) admits, or None without a lower bound."""
    try:
        spec = SpecifierSet(specifier, prereleases=True)
    except InvalidSpecifier:
        return None
    bounds: List[Version] = []
    for clause in spec:
        if clause.operator in ("==", "===", ">=", "~=", ">"):
            text = clause.version[:-2] if clause.version.endswith(".*") else clause.version
            try:
                bounds.append(Version(text))
            except InvalidVersion:
                return None
    if not bounds:
        return None
    candidate = max(bounds)
    # ``>4.30`` or ``>=4.30,!=4.30.0``: step the last release segment until the set admits it.
    for _ in range(20):
        if candidate in spec:
            return candidate
        release = candidate.release + (0,) * max(0, 3 - len(candidate.release))
        candidate = Version(".".join(map(str, release[:-1] + (release[-1] + 1,))))
    return None


def _requirement_pin(text: str, source: str) -> Optional[Pin]:
    try:
        requirement = Requirement(text.strip())
    except InvalidRequirement:
        return None
    package = canonical_package(requirement.name)
    if package not in TRACKED or requirement.url:
        return None
    version = lowest_allowed(str(requirement.specifier))
    return Pin(package, version, source) if version is not None else None


# -- requirements files ------------------------------------------------------------------------

def requirements_pins(text: str, name: str, include: Any = None) -> List[Pin]:
    """Pins of a pip requirements (or constraints) file. ``include(relative_name)`` returns the
    text of a ``-r``/``-c`` file, or None; it is not called when None."""
    pins: List[Pin] = []
    lines = text.splitlines()
    row = 0
    while row < len(lines):
        start = row
        line = lines[row]
        while line.endswith("\\") and row + 1 < len(lines):  # continuation lines
            row += 1
            line = line[:-1] + " " + lines[row]
        row += 1
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        if line.startswith("-"):
            option, _, rest = line.partition(" ") if " " in line else line.partition("=")
            if option in ("-r", "--requirement", "-c", "--constraint") and include is not None:
                nested = include(rest.strip())
                if nested is not None:
                    pins.extend(requirements_pins(nested[1], nested[0], None))
            continue
        pin = _requirement_pin(line.split(" --", 1)[0], f"{name}:{start + 1}")
        if pin is not None:
            pins.append(pin)
    return pins


# -- pyproject.toml ----------------------------------------------------------------------------

def _poetry_lowest(constraint: Any) -> Optional[Version]:
    """Lowest version of a Poetry constraint: ``^1.2``, ``~1.2``, ``1.2.*``, ``>=1.2,<2``, ``1.2``
    (exact), a table ``{version = "..."}`` or a list of tables (one per marker)."""
    if isinstance(constraint, dict):
        return _poetry_lowest(constraint.get("version"))
    if isinstance(constraint, list):
        found = [v for v in (_poetry_lowest(c) for c in constraint) if v is not None]
        return min(found) if found else None
    if not isinstance(constraint, str):
        return None
    lowest: List[Version] = []
    for part in re.split(r"\s*\|\|\s*|\s*\|\s*", constraint.strip()):
        clauses = [c for c in re.split(r"[,\s]+", part) if c]
        pep440 = []
        for clause in clauses:
            if clause.startswith(("^", "~")) and not clause.startswith("~="):
                pep440.append(">=" + clause.lstrip("^~"))
            elif clause[0].isdigit():
                pep440.append("==" + clause)
            else:
                pep440.append(clause)
        version = lowest_allowed(",".join(pep440)) if pep440 else None
        if version is not None:
            lowest.append(version)
    return min(lowest) if lowest else None


def pyproject_pins(text: str, name: str) -> List[Pin]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return []
    pins: List[Pin] = []
    project = data.get("project")
    if isinstance(project, dict):
        pins += _own_pin(project.get("name"), project.get("version"), f"{name} [project]")
        groups: List[Tuple[str, Any]] = [("project.dependencies", project.get("dependencies"))]
        optional = project.get("optional-dependencies")
        if isinstance(optional, dict):
            groups += [(f"project.optional-dependencies.{k}", v) for k, v in optional.items()]
        for where, entries in groups:
            if isinstance(entries, list):
                for entry in entries:
                    if isinstance(entry, str):
                        pin = _requirement_pin(entry, f"{name} [{where}]")
                        if pin is not None:
                            pins.append(pin)
    tool = data.get("tool")
    poetry = tool.get("poetry") if isinstance(tool, dict) else None
    if isinstance(poetry, dict):
        tables: List[Tuple[str, Any]] = [("tool.poetry.dependencies", poetry.get("dependencies")),
                                         ("tool.poetry.dev-dependencies", poetry.get("dev-dependencies"))]
        group = poetry.get("group")
        if isinstance(group, dict):
            tables += [(f"tool.poetry.group.{k}.dependencies", v.get("dependencies"))
                       for k, v in group.items() if isinstance(v, dict)]
        for where, table in tables:
            if isinstance(table, dict):
                for package, constraint in table.items():
                    canonical = canonical_package(package)
                    version = _poetry_lowest(constraint) if canonical in TRACKED else None
                    if version is not None:
                        pins.append(Pin(canonical, version, f"{name} [{where}]"))
    return pins


# -- setup.cfg ---------------------------------------------------------------------------------

def setup_cfg_pins(text: str, name: str) -> List[Pin]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return []
    pins: List[Pin] = []
    if parser.has_section("metadata"):
        pins += _own_pin(parser.get("metadata", "name", fallback=None),
                         parser.get("metadata", "version", fallback=None), f"{name} [metadata]")
    entries: List[Tuple[str, str]] = []
    if parser.has_option("options", "install_requires"):
        entries.append(("options.install_requires", parser.get("options", "install_requires")))
    if parser.has_section("options.extras_require"):
        entries += [(f"options.extras_require.{k}", v) for k, v in parser.items("options.extras_require")]
    for where, value in entries:
        for line in value.splitlines():
            pin = _requirement_pin(line.split("#", 1)[0], f"{name} [{where}]") if line.strip() else None
            if pin is not None:
                pins.append(pin)
    return pins


def _own_pin(package: Any, version: Any, source: str) -> List[Pin]:
    """The project is ``package`` itself (a vendored or forked copy): it targets its own version."""
    if not isinstance(package, str) or not isinstance(version, str):
        return []
    canonical = canonical_package(package)
    try:
        parsed = Version(version)
    except InvalidVersion:
        return []
    return [Pin(canonical, parsed, source)] if canonical in TRACKED else []


# -- setup.py ----------------------------------------------------------------------------------

def setup_py_pins(text: str, name: str) -> List[Pin]:
    """Pins of the literal ``name``/``version``, ``install_requires`` and ``extras_require``
    arguments of a ``setup(...)`` call; the file is parsed, never run."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    pins: List[Pin] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "setup"):
            continue
        arguments = {k.arg: k.value for k in node.keywords if k.arg}
        literal = {k: _literal(v) for k, v in arguments.items()}
        pins += _own_pin(literal.get("name"), literal.get("version"), f"{name} [setup()]")
        requirements = literal.get("install_requires")
        groups = [("install_requires", requirements)]
        extras = literal.get("extras_require")
        if isinstance(extras, dict):
            groups += [(f"extras_require.{k}", v) for k, v in extras.items()]
        for where, values in groups:
            for value in values if isinstance(values, list) else ():
                pin = _requirement_pin(value, f"{name} [{where}]") if isinstance(value, str) else None
                if pin is not None:
                    pins.append(pin)
    return pins


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


# -- notebooks ---------------------------------------------------------------------------------

# `!pip`, `%pip`, or `pip` alone (IPython automagic; only lines the notebook adapter masked as
# IPython syntax get here).
_PIP = re.compile(r"^\s*[!%]?\s*(?:pip3?|python3?\s+-m\s+pip|uv\s+pip)\s+install\b(?P<args>.*)$")
_OPTIONS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url",
                       "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix"}


def pip_line_pins(line: str, source: str) -> List[Pin]:
    """Pins of one ``!pip install ...`` / ``%pip install ...`` line."""
    match = _PIP.match(line.replace("\\\n", " "))
    if match is None:
        return []
    try:
        words = shlex.split(match.group("args"), comments=True)
    except ValueError:
        words = match.group("args").split()
    pins: List[Pin] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word.startswith("-"):
            skip = word in _OPTIONS_WITH_VALUE
            continue
        if word.startswith(("$", "{")) or word in ("&&", "||", ";", "|"):
            break  # shell interpolation or a second command: nothing reliable after it
        pin = _requirement_pin(word, source)
        if pin is not None:
            pins.append(pin)
    return pins


def magic_pins(magics: Iterable[Any]) -> List[Pin]:
    """Pins of a notebook's IPython lines (``sources.notebook.Magic``: cell, row, text)."""
    pins: List[Pin] = []
    for magic in magics:
        for line in magic.text.replace("\\\n", " ").splitlines():
            pins.extend(pip_line_pins(line, f"`{line.strip()[:60]}` in cell {magic.cell}"))
    return pins


def strongest(pins: Sequence[Pin]) -> Dict[str, Pin]:
    """One pin per package: the lowest version among those found (deterministic, and the oldest
    version the project admits)."""
    out: Dict[str, Pin] = {}
    for pin in pins:
        current = out.get(pin.package)
        if current is None or pin.version < current.version:
            out[pin.package] = pin
    return out


# -- a directory's pins ------------------------------------------------------------------------

def _is_requirements(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(".txt") and ("requirements" in lowered or lowered.startswith("constraints"))


def _exists(path: Path, kind: str = "any") -> bool:
    """``path.exists()``/``is_dir()``/``is_file()`` that treats an unreadable directory as empty."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file() if kind == "file" else path.exists()
    except OSError:
        return False


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


def directory_pins(directory: Path, label: Any = str) -> List[Pin]:
    """Pins of the pin files directly in ``directory`` (and ``requirements/*.txt``).
    ``label(path)`` names a file in sources (e.g. relative to the working directory)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    files: List[Path] = [directory / n for n in names if _is_requirements(n)]
    nested = directory / "requirements"
    if "requirements" in names and _exists(nested, "dir"):
        try:
            files += [nested / n for n in sorted(os.listdir(nested)) if n.endswith(".txt")]
        except OSError:
            pass
    pins: List[Pin] = []
    for path in files:
        text = _read(path)
        if text is None:
            continue

        def include(relative: str, base: Path = path.parent) -> Optional[Tuple[str, str]]:
            target = base / relative
            nested_text = _read(target) if _exists(target, "file") else None
            return (label(target), nested_text) if nested_text is not None else None

        pins += requirements_pins(text, label(path), include)
    for name, parse in (("pyproject.toml", pyproject_pins), ("setup.cfg", setup_cfg_pins),
                        ("setup.py", setup_py_pins)):
        if name in names:
            text = _read(directory / name)
            if text is not None:
                pins += parse(text, label(directory / name))
    return pins


def _relative_label(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


class PinFinder:
    """Per package, the pin of the nearest directory at or above a file's directory that pins it,
    up to the repository root (the first directory holding ``.git``) or the file system root;
    cached per directory."""

    def __init__(self, label: Any = _relative_label) -> None:
        self._label = label
        self._own: Dict[Path, Dict[str, Pin]] = {}
        self._resolved: Dict[Path, Dict[str, Pin]] = {}

    def _own_pins(self, directory: Path) -> Dict[str, Pin]:
        if directory not in self._own:
            self._own[directory] = strongest(directory_pins(directory, self._label))
        return self._own[directory]

    def pins(self, directory: Path) -> Mapping[str, Pin]:
        if directory in self._resolved:
            return self._resolved[directory]
        own = dict(self._own_pins(directory))
        parent = directory.parent
        at_root = parent == directory or _exists(directory / ".git")
        inherited = {} if at_root else self.pins(parent)
        merged = {**inherited, **own}
        self._resolved[directory] = merged
        return merged


def with_pins(settings: Any, pins: Mapping[str, Pin]) -> Any:
    """``settings`` with ``pins`` for every package not set explicitly (``--target-version`` or
    ``target-versions`` in a config file always win; an earlier, farther pin does not)."""
    explicit = set(settings.target_versions) - set(settings.pinned_packages)
    chosen = {p: pin for p, pin in pins.items() if p not in explicit}
    if not chosen:
        return settings
    return settings.with_changes(
        target_versions={**settings.target_versions, **{p: pin.version for p, pin in chosen.items()}},
        version_sources={**settings.version_sources, **{p: pin.source for p, pin in chosen.items()}},
        pinned_packages=tuple(sorted(set(settings.pinned_packages) | set(chosen))),
    )
