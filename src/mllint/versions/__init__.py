"""Which library versions a file targets, and where that came from.

Resolution order, per package: ``--target-version`` and ``[tool.mllint] target-versions``
(``Settings.target_versions``, explicit); else a pin found in the project (``pins``: requirements
files, ``pyproject.toml``, ``setup.cfg``, a notebook's ``%pip install`` cells; folded into the
settings by whoever reads files, with their source in ``Settings.version_sources``); else the
latest release mllint's rules were checked against (``LATEST_KNOWN``).
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

from packaging.version import Version

# The newest release of each package whose source the rules' premises were checked against.
LATEST_KNOWN: Mapping[str, Version] = {
    "transformers": Version("5.23.0"),
    "trl": Version("1.16.0"),
    "torch": Version("2.13.0"),
    "peft": Version("0.21.2"),
    "lightning": Version("2.6.6"),
}

# Distribution names that mean the same package to the rules.
ALIASES: Mapping[str, str] = {
    "pytorch-lightning": "lightning",
    "pytorch_lightning": "lightning",
}

TRACKED = tuple(LATEST_KNOWN)


def canonical_package(name: str) -> str:
    """``Transformers``/``pytorch_lightning`` -> ``transformers``/``lightning`` (PEP 503 style)."""
    normalized = name.strip().lower().replace("_", "-").replace(".", "-")
    return ALIASES.get(normalized, normalized)


def resolve(package: str, versions: Mapping[str, Version],
            sources: Mapping[str, str]) -> Tuple[Optional[Version], Optional[str]]:
    """(version, where it came from); the source is None when the version is assumed (latest
    known) or unknown."""
    version = versions.get(package)
    if version is not None:
        return version, sources.get(package, "configuration")
    return LATEST_KNOWN.get(package), None


def describe(package: str, versions: Mapping[str, Version], sources: Mapping[str, str]) -> str:
    """``trl 0.15.2 (requirements.txt:3)`` or ``trl 1.16.0 (assumed: the latest mllint knows)``,
    for messages that name the version fact they rest on."""
    version, source = resolve(package, versions, sources)
    if version is None:
        return f"{package} (version unknown)"
    if source is None:
        return f"{package} {version} (assumed: the latest mllint knows; pin it or set target-versions)"
    return f"{package} {version} ({source})"
