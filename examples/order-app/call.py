"""Place two orders as the ``ingress`` workload (the identity frontend allows): one as anyone,
one as the test user, whom the VirtualService always sends to orders v2.

    MESH_SERVICE=ingress MESH_CONTROL_PLANE=http://127.0.0.1:15010 MESH_TOKEN=... python call.py
"""

from __future__ import annotations

import time

import meshlib

FRONTEND = "frontend.default.svc.cluster.local"

with meshlib.Mesh.from_env() as mesh, mesh.http_client(timeout=10) as client:
    deadline = time.monotonic() + 30
    while not mesh.snapshot.endpoints(FRONTEND) and time.monotonic() < deadline:
        time.sleep(0.1)  # frontend registers its endpoint once it is up
    for headers in ({}, {"end-user": "tester"}):
        answer = client.get("http://frontend/order/book", headers=headers)
        # 503 while the app is still starting: frontend is up before the orders version the
        # canary picked has registered (no healthy upstream). Asked again, for up to 30 s.
        while answer.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = client.get("http://frontend/order/book", headers=headers)
        print(answer.status_code, answer.json())
