"""The README example runs as written (a real process, a real downstream server)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_backends import GrpcBackend, grpc_server, grpc_service_entry

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_runs_as_written(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    (tmp_path / "reviews.py").write_text(code.group(1))
    ratings = GrpcBackend("5-stars")
    handler = grpc.method_handlers_generic_handler(
        "ratings.Ratings", {"Get": grpc.unary_unary_rpc_method_handler(ratings.unary)}
    )
    with grpc_server(handler) as ratings_port:
        policy = tmp_path / "policy.yaml"
        policy.write_text(grpc_service_entry("ratings", {"v1-a": ratings_port}))
        sock_port = _free_port()
        env = {
            **os.environ,
            "MESH_SERVICE": "reviews",
            "MESH_CONFIG": str(policy),
            "PORT": str(sock_port),
            "MESH_DATA_DIR": str(tmp_path / "data"),
        }
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "reviews.py")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{sock_port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=20)
                answer = channel.unary_unary("/reviews.Reviews/Get")(b"book-7", timeout=2)
            assert answer == b"review of book-7, rated 5-stars"
            assert ratings.remaining[0] is not None
            # grpc rounds the grpc-timeout it sends up a little; no deadline would read ~9e18 s.
            assert ratings.remaining[0] <= 2.05, "the caller's deadline travelled on"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, proc.stdout.read() if proc.stdout else ""


def _free_port() -> int:
    from tests.servers import free_port

    return free_port()
