from __future__ import annotations

import pytest

from mllint.core.registry import default_registry


@pytest.fixture(scope="session")
def registry():
    return default_registry()
