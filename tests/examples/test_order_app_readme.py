"""examples/order-app/README.md runs as written: its shell block, word for word, on a fresh
state folder; what it prints is what the README says it prints."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.shell import run_bash

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "examples" / "order-app" / "README.md"


def _block() -> str:
    text = README.read_text()
    by_hand = text[text.index("## By hand") :]
    match = re.search(r"```bash\n(.*?)```", by_hand, re.S)
    assert match is not None
    return match.group(1)


def test_the_by_hand_block_runs_the_app_and_places_both_orders(tmp_path: Path) -> None:
    block = _block()
    port = free_port()  # the README's port, moved so that nothing else on the machine collides
    script = block.replace("15010", str(port)).replace("meshctl serve ", f"meshctl serve --port {port} ")
    assert "15010" not in script
    venv = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}",
        "MESHCTL_SERVER": f"http://127.0.0.1:{port}",
        "TMPDIR": str(tmp_path),
    }
    # `source .venv/bin/activate` works from a clone; the test runs in whatever venv runs it.
    script = script.replace("source .venv/bin/activate\n", "")
    # The block ends with `kill $(jobs -p)`; whatever it missed goes with its group.
    returncode, out = run_bash(script, cwd=ROOT, env=env, timeout=90)
    assert returncode == 0, out
    orders = [line for line in out.splitlines() if line.startswith("200 {")]
    assert len(orders) == 2, out
    assert "'version': 'v2'" in orders[1]  # the test user, always on v2
    assert re.search(r"'version': 'v[12]'", orders[0])
    for service in ("frontend", "orders", "inventory", "ingress"):
        assert f"spiffe://cluster.local/ns/default/sa/{service}" in out


@pytest.mark.parametrize("name", ["frontend.py", "orders.py", "inventory.py", "call.py"])
def test_each_service_says_how_to_run_it_on_its_own(name: str) -> None:
    source = (ROOT / "examples" / "order-app" / name).read_text()
    assert "MESH_SERVICE=" in source.split('"""')[1]
