"""Watcher against a replica that sends a delta not made for the version it holds.

The real config service only offers a delta from a version it served itself; this in-test
server (real HTTP on 127.0.0.1) plays a replica that gets it wrong, which the real one cannot
be made to do, to show the workload refuses it, keeps its snapshot and asks for a whole one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshlib.core.snapshot import Snapshot
from meshlib.protocol import EPOCH_HEADER
from meshlib.registry import WorkloadRegistration
from meshlib.watcher import Watcher
from tests.conftest import virtual_service
from tests.servers import serve


def full(version: int, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": version, "trustDomain": "cluster.local", "trustBundle": [], "resources": resources}


def test_a_delta_that_does_not_start_at_the_held_version_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    manifest = {**virtual_service(), "metadata": {"name": "reviews", "namespace": "default"}}
    answers = [
        full(5, []),
        {"version": 7, "base": 4, "changed": {"resources": [manifest]}, "removed": {}},  # not from 5
        full(7, [manifest]),
    ]
    bodies: list[dict[str, Any]] = []

    async def watch(request: Request) -> Response:
        bodies.append(json.loads(await request.body()))
        return JSONResponse(answers[len(bodies) - 1], headers={EPOCH_HEADER: "e1"})

    async def register(request: Request) -> Response:
        return JSONResponse({})

    app = Starlette(
        routes=[
            Route("/v1/watch", watch, methods=["POST"]),
            Route("/v1/workloads/{id}", register, methods=["PUT"]),
        ]
    )
    received: list[Snapshot] = []
    with serve(app) as port:

        async def three_rounds() -> None:
            watcher = Watcher(
                [f"http://127.0.0.1:{port}"],
                lambda: WorkloadRegistration(id="w-1", service="frontend"),
                lambda snapshot, payload: received.append(snapshot),
            )
            try:
                for _ in answers:
                    await watcher.round()
            finally:
                await watcher.aclose()

        with caplog.at_level(logging.WARNING, logger="meshlib"):
            asyncio.run(three_rounds())
    assert [s.version for s in received] == [5, 7], "the bad delta was not applied"
    assert len(received[1].resources) == 1
    assert (bodies[1]["delta"], bodies[1]["epoch"]) == (True, "e1"), "from the epoch that served it"
    assert bodies[1]["version"] == 5
    assert "delta" not in bodies[2], "after a refused delta: the whole snapshot"
    assert bodies[2]["version"] == -1
    assert "snapshot delta from version 4 to 7 does not start at 5" in caplog.text
