"""The field inventory: every field of every kind is enforced (and a test exercises it) or
refused with the reason; docs/istio-fields.md is the inventory as generated."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

from meshlib.errors import ConfigError
from meshlib.policy import load_paths
from meshlib.policy.inventory import fields, render_markdown
from tests.policy.field_tests import EXERCISED

ROOT = Path(__file__).resolve().parents[2]
REFUSED_FILE = Path(__file__).parent / "data" / "refused-fields.yaml"


def test_docs_table_is_the_inventory_as_generated() -> None:
    written = (ROOT / "docs" / "istio-fields.md").read_text(encoding="utf-8")
    assert written == render_markdown(), (
        "docs/istio-fields.md is stale: python -m meshlib.policy.inventory > docs/istio-fields.md"
    )


def test_every_enforced_field_names_a_test_that_exists() -> None:
    enforced = {f.path for f in fields() if f.needs_test}
    missing = sorted(enforced - EXERCISED.keys())
    assert not missing, "enforced fields no test is named for (tests/policy/field_tests.py):\n" + "\n".join(
        missing
    )
    stale = sorted(EXERCISED.keys() - enforced)
    assert not stale, "field_tests.py names fields that are not enforced leaves:\n" + "\n".join(stale)
    absent = [f"{path}: {ref}" for path, ref in EXERCISED.items() if not _test_exists(ref)]
    assert not absent, "field_tests.py names tests that do not exist:\n" + "\n".join(absent)


@cache
def _test_names(file: str) -> frozenset[str]:
    tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    )


def _test_exists(ref: str) -> bool:
    file, _, name = ref.partition("::")
    return (ROOT / file).is_file() and name in _test_names(file)


def test_each_refused_field_is_named_by_validation_with_its_reason() -> None:
    """The file sets every refused field; each one is named, at its own path, with the reason."""
    try:
        load_paths([REFUSED_FILE])
    except ConfigError as exc:
        issues = exc.issues
    else:
        raise AssertionError("a file of refused fields was accepted")
    found = {(issue.path.rsplit(".", 1)[-1], issue.message) for issue in issues}
    for field in fields():
        reason = field.model.UNSUPPORTED.get(field.name)
        if reason is None:
            continue
        alias = field.path.rsplit(".", 1)[-1]
        expected = f"{alias} is not supported by meshlib: {reason}"
        assert (alias, expected) in found, f"{field.path} is not refused by {REFUSED_FILE.name}"


def test_meshctl_validate_names_every_refused_field() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshlib", "validate", "-f", str(REFUSED_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    refused = [f for f in fields() if f.model.UNSUPPORTED.get(f.name) is not None]
    for field in refused:
        alias = field.path.rsplit(".", 1)[-1]
        assert any(f": {alias} is not supported by meshlib: " in line for line in lines), field.path
    for partly in ("spec.tls", "spec.tcp", "h2UpgradePolicy", "loadBalancer.simple"):
        assert any(partly in line and "not supported" in line for line in lines), partly
