"""``caller``: sends 100 requests to ``http://hello/`` through the mesh and counts the answers.

    MESH_SERVICE=caller MESH_CONTROL_PLANE=... MESH_TOKEN=... python call.py [ENDPOINTS]

It first waits (at most 30 s) until the mesh knows ENDPOINTS endpoints of hello (default 2:
v1 and v2). A request the mesh cannot send is counted by its error (e.g. NoHealthyUpstreamError).
Then one request without the mesh (plain httpx, no certificate) to show what STRICT does to it.
"""

from __future__ import annotations

import collections
import sys
import time

import httpx

import meshlib

HELLO = "hello.default.svc.cluster.local"
ENDPOINTS = int(sys.argv[1]) if len(sys.argv) > 1 else 2

with meshlib.Mesh.from_env() as mesh, mesh.http_client(timeout=5) as client:
    deadline = time.monotonic() + 30
    while len(mesh.snapshot.endpoints(HELLO)) < ENDPOINTS and time.monotonic() < deadline:
        time.sleep(0.1)  # each version registers its endpoint once it is up
    answers: collections.Counter[str] = collections.Counter()
    for _ in range(100):
        try:
            response = client.get("http://hello/")
        except httpx.HTTPError as exc:  # meshlib's errors are httpx's: NoHealthyUpstreamError, ...
            answers[f"{type(exc).__name__}: {exc}"] += 1
            continue
        answers[f"{response.status_code} {response.text.strip()}"] += 1
    for answer, count in sorted(answers.items()):
        print(f"{count:3d} x {answer}")
    endpoint = mesh.snapshot.endpoints(HELLO)[0]
    plain = httpx.get(f"http://{endpoint.address}:{endpoint.port}/")
    print(f"without the mesh: {plain.status_code} {plain.text.strip()}")
