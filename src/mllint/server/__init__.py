"""``mllint server``: the Language Server Protocol front end (stdio), for editors.

Layers, like the CLI's, over the pure core:

- ``convert``: pure conversions between mllint's values and LSP's (positions in the negotiated
  encoding, diagnostics, fixes as text edits, ``# noqa`` edits, code actions);
- ``documents``: what one open document (a ``.py`` file or a notebook's code cells) lints to, and
  the code actions and "fix all" edits for it; pure given the text and the settings;
- ``server``: the pygls ``LanguageServer``: document sync, debouncing, the lint thread,
  configuration discovery and reloading, publishing.

Nothing here is imported by ``import mllint`` or by the CLI until ``mllint server`` runs; pygls
and lsprotocol come with the ``server`` extra (``pip install 'mllint-ml[server]'``).
"""

from __future__ import annotations

from typing import Optional

INSTALL_HINT = "pip install 'mllint-ml[server]'"


def missing_dependency() -> Optional[str]:
    """The name of the server's missing dependency (pygls or lsprotocol), or None."""
    for name in ("lsprotocol", "pygls"):
        try:
            __import__(name)
        except ImportError:
            return name
    return None
