"""The reliability suite: the default test run takes its fast scenarios; ``scripts/reliability``
runs every one (``MESHLIB_RELIABILITY=full``), including those marked ``full``."""

from __future__ import annotations

import os

import pytest

FULL = os.environ.get("MESHLIB_RELIABILITY") == "full"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL:
        return
    here = os.path.dirname(__file__)
    left_out = [item for item in items if item.get_closest_marker("full") and str(item.path).startswith(here)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]
