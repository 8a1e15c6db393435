"""meshctl fixtures: the CLI's main() against a real config service, with captured output."""

from __future__ import annotations

import pytest

from meshlib.cli.main import main
from meshlib.controlplane.server import ConfigServer


@pytest.fixture
def ctl(server: ConfigServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run meshctl with the test server and its admin token; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("MESHCTL_TOKEN", server.admin_token)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--server", server.url, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
