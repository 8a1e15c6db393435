"""For each enforced field of the inventory (meshlib.policy.inventory), a test that fails if
the field were ignored: "path": "tests/file.py::test_name"."""

from __future__ import annotations

EXERCISED: dict[str, str] = {}
