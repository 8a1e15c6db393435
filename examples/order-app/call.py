"""Place two orders as the ``ingress`` workload (the identity frontend allows): one as anyone,
one as the test user, whom the VirtualService always sends to orders v2.

    MESH_SERVICE=ingress MESH_CONTROL_PLANE=http://127.0.0.1:15010 MESH_TOKEN=... python call.py
"""

from __future__ import annotations

import time

import meshlib

# Every workload the app needs, by host and DestinationRule subset: each registers its endpoint
# once it serves.
NEEDED = [
    ("frontend.default.svc.cluster.local", None),
    ("orders.default.svc.cluster.local", "v1"),
    ("orders.default.svc.cluster.local", "v2"),
    ("inventory.default.svc.cluster.local", None),
]

with meshlib.Mesh.from_env() as mesh, mesh.http_client(timeout=10) as client:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(mesh.snapshot.endpoints(h, s) for h, s in NEEDED):
        time.sleep(0.1)
    for headers in ({}, {"end-user": "tester"}):
        answer = client.get("http://frontend/order/book", headers=headers)
        # 503 for a moment after that: this process has seen every endpoint, frontend's or
        # orders' own copy of the policy may be a few milliseconds behind. Asked again.
        while answer.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = client.get("http://frontend/order/book", headers=headers)
        print(answer.status_code, answer.json())
