"""The result cache: a checked file whose content, path and settings are unchanged is not checked
again.

Entries live in ``.mllint_cache/`` (``cache-dir`` in the config, ``--cache-dir`` or
``MLLINT_CACHE_DIR`` elsewhere), one small JSON file per (file content, path, settings, mllint),
named by the SHA-256 of everything that can change a result:

- the run: mllint's version, a fingerprint of mllint's own source files (size and modification
  time of every module, so an edited checkout never serves results of the old code), the
  Python and libcst versions, and every registered rule (code, class, and for rules from other
  packages, their module file's size and modification time);
- the effective settings of the file: selection, ``per-file-ignores`` and the directory they
  are relative to, target versions, per-rule options, preview, unsafe fixes, triage;
- the file: the path as shown (it is in messages), its absolute path (``per-file-ignores``
  match it), and the SHA-256 of its bytes.

Only plain checks use the cache (``--fix``, ``--diff`` and ``--add-noqa`` read and write files
and always check them afresh). Entries are written to a temporary file and renamed into place,
so concurrent runs never see a partial entry; an entry that cannot be read or parsed is a miss
and is rewritten. Results with an internal error (MLL999) or an unreadable file (MLL904) are not
stored. The directory holds a ``CACHEDIR.TAG`` and a ``.gitignore`` of ``*``, and can be deleted
at any time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mllint.core.diagnostic import Applicability, Diagnostic, Edit, Fix, Location, Severity
from mllint.settings import Settings

CACHE_DIR_NAME = ".mllint_cache"
ENV_CACHE_DIR = "MLLINT_CACHE_DIR"
FORMAT = "v1"  # the layout of entries; bump when it changes
NOT_CACHED = ("MLL999", "MLL904")
CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# This file is a cache directory tag created by mllint.\n"
                "# For information about cache directory tags, see https://bford.info/cachedir/\n")


def default_cache_dir(settings: Settings) -> Path:
    """Where ``settings``' results are cached: ``cache_dir``, else ``MLLINT_CACHE_DIR``, else
    ``.mllint_cache`` next to the config file (the current directory without one)."""
    if settings.cache_dir:
        return Path(settings.cache_dir)
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).absolute()
    return Path(settings.root or os.getcwd()) / CACHE_DIR_NAME


# -- what a result depends on --------------------------------------------------------------------

_RUN_FINGERPRINT: Optional[str] = None


def run_fingerprint() -> str:
    """Everything outside the file and its settings that can change a result (once per process)."""
    global _RUN_FINGERPRINT
    if _RUN_FINGERPRINT is None:
        import libcst

        import mllint
        from mllint.core.registry import default_registry

        package = Path(mllint.__file__).parent
        parts: List[Any] = [FORMAT, mllint.__version__, sys.version, sys.implementation.name,
                            getattr(libcst, "__version__", "?"), _tree_stamp(package)]
        for code, rule in default_registry().rules.items():
            module = sys.modules.get(rule.__module__)
            where = getattr(module, "__file__", None) or ""
            stamp = None
            if where and not os.path.abspath(where).startswith(str(package)):
                stamp = _file_stamp(where)  # a rule pack: its own code may change
            parts.append((code, rule.__module__, rule.__qualname__, stamp))
        _RUN_FINGERPRINT = _digest(parts)
    return _RUN_FINGERPRINT


def _file_stamp(path: str) -> Optional[Tuple[int, int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _tree_stamp(directory: Path) -> str:
    """Size and modification time of every module of mllint itself (a few milliseconds)."""
    entries = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                entries.append((os.path.relpath(path, directory), _file_stamp(path)))
    return _digest(entries)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def settings_fingerprint(settings: Settings) -> str:
    """The settings that can change a file's result (discovery-only settings are left out)."""
    return _digest({
        "select": settings.select, "extend_select": settings.extend_select, "ignore": settings.ignore,
        "per_file_ignores": settings.per_file_ignores, "root": settings.root,
        "target_versions": sorted((k, str(v)) for k, v in settings.target_versions.items()),
        "version_sources": sorted(settings.version_sources.items()),
        "unsafe_fixes": settings.unsafe_fixes, "preview": settings.preview,
        "rule_options": settings.rule_options, "triage": settings.triage,
        "cwd": os.getcwd() if settings.root is None else None,
    })


# -- entries -------------------------------------------------------------------------------------

def _location(loc: Location) -> List[int]:
    return [loc.row, loc.column]


def encode_diagnostic(d: Diagnostic) -> Dict[str, Any]:
    fix = None
    if d.fix is not None:
        fix = [d.fix.message, d.fix.applicability.value,
               [[e.start, e.end, e.content, _location(e.location), _location(e.end_location)]
                for e in d.fix.edits]]
    return {"c": d.code, "n": d.name, "m": d.message, "s": d.severity.value,
            "l": _location(d.location), "e": _location(d.end_location), "f": fix, "h": d.help,
            "q": d.noqa_row, "u": d.url, "o": [d.start, d.end], "k": d.cell}


def decode_diagnostic(data: Dict[str, Any]) -> Diagnostic:
    fix = None
    if data["f"] is not None:
        message, applicability, edits = data["f"]
        fix = Fix(str(message), Applicability(applicability), tuple(
            Edit(int(s), int(e), str(c), Location(*l1), Location(*l2)) for s, e, c, l1, l2 in edits))
    start, end = data["o"]
    return Diagnostic(code=str(data["c"]), name=str(data["n"]), message=str(data["m"]),
                      severity=Severity(data["s"]), location=Location(*data["l"]),
                      end_location=Location(*data["e"]), fix=fix, help=data["h"],
                      noqa_row=data["q"], url=data["u"], start=int(start), end=int(end), cell=data["k"])


class Cache:
    """The entries of one cache directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.entries = self.directory / FORMAT
        self._prepared = False

    def key(self, display: str, path: str, settings_key: str, raw: bytes) -> str:
        content = hashlib.sha256(raw).hexdigest()
        return hashlib.sha256("\0".join((run_fingerprint(), settings_key, display, os.path.abspath(path),
                                         content)).encode("utf-8", "surrogatepass")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.entries / key[:2] / f"{key[2:]}.json"

    def get(self, key: str) -> Optional[List[Diagnostic]]:
        """The cached diagnostics, or None (no entry, or one that cannot be read: a miss)."""
        try:
            with open(self._path(key), "rb") as handle:
                data = json.loads(handle.read())
            if data.get("key") != key:
                return None
            return [decode_diagnostic(d) for d in data["diagnostics"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def put(self, key: str, diagnostics: List[Diagnostic]) -> None:
        """Store an entry atomically; a cache that cannot be written is silently not used."""
        if any(d.code in NOT_CACHED for d in diagnostics):
            return
        target = self._path(key)
        data = json.dumps({"key": key, "diagnostics": [encode_diagnostic(d) for d in diagnostics]},
                          separators=(",", ":"))
        try:
            self._prepare()
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(target, data.encode("utf-8"))
        except OSError:
            pass

    def _prepare(self) -> None:
        """Create the directory with its ``CACHEDIR.TAG`` and ``.gitignore`` (once)."""
        if self._prepared:
            return
        self.entries.mkdir(parents=True, exist_ok=True)
        for name, text in (("CACHEDIR.TAG", CACHEDIR_TAG), (".gitignore", "# Created by mllint.\n*\n")):
            path = self.directory / name
            if not path.exists():
                _write_atomically(path, text.encode("utf-8"))
        self._prepared = True


def _write_atomically(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
