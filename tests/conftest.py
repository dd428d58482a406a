from __future__ import annotations

import pytest

from mllint.core.registry import default_registry


@pytest.fixture(scope="session")
def registry():
    return default_registry()


def pytest_addoption(parser):
    parser.addoption("--update-fixtures", action="store_true", default=False,
                     help="rewrite tests/fixtures/*/*.expected from the current output")
