"""Fixtures of the gRPC tests: three real gRPC servers (reviews v1-a, v1-b, v2-a), a static Mesh."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpc_backends import GrpcBackend, grpc_server

from meshlib import Mesh


@pytest.fixture
def backends() -> Iterator[dict[str, tuple[GrpcBackend, int]]]:
    with ExitStack() as stack:
        found = {}
        for name in ("v1-a", "v1-b", "v2-a"):
            backend = GrpcBackend(name)
            found[name] = (backend, stack.enter_context(grpc_server(backend.handler())))
        yield found


@pytest.fixture
def make_mesh(tmp_path: Path) -> Iterator[Callable[[str], Mesh]]:
    meshes: list[Mesh] = []

    def start(policy: str) -> Mesh:
        path = tmp_path / f"policy-{len(meshes)}.yaml"
        path.write_text(policy)
        mesh = Mesh("frontend", config=path).start()
        mesh.rng.seed(20261122)  # rate checks allow about 2 standard deviations: keep them repeatable
        meshes.append(mesh)
        return mesh

    yield start
    for mesh in meshes:
        mesh.close()
