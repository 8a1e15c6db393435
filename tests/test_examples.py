"""examples/ runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_mtls_quickstart_runs_as_written() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "mtls_quickstart.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "reviews saw spiffe://cluster.local/ns/default/sa/frontend"
    assert lines[1].startswith("plaintext caller: 403 mutual TLS required")
    issuers = {line.split(":")[0]: line.rsplit("issuer ", 1)[1] for line in lines[2:4]}
    assert set(issuers) == {"frontend", "reviews"}
    assert len(set(issuers.values())) == 1, "both certificates come from the same CA"
