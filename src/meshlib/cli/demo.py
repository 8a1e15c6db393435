"""``meshctl demo``: the foundation at work on an embedded config service, no set-up needed.

1. start a config service in a temporary folder;
2. apply a Bookinfo-style canary for ``reviews`` (header rule, 90/10 split);
3. a workload (``productpage``) receives it and acknowledges it;
4. shift the canary to 50/50 and time how long until the workload has it;
5. stop the config service: a restarted workload starts from its last-known-good copy.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ..controlplane.client import ControlPlaneClient
from ..controlplane.server import ConfigServer
from ..core.snapshot import Snapshot
from ..mesh import Mesh
from ..policy.loader import load_text
from .output import table

__all__ = ["run_demo"]

POLICY = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - name: jason-sees-v2
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - name: canary
    route:
    - destination: {host: reviews, subset: v1}
      weight: {v1}
    - destination: {host: reviews, subset: v3}
      weight: {v3}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure"}
"""


def _policy(v1: int, v3: int) -> str:
    return POLICY.replace("weight: {v1}", f"weight: {v1}").replace("weight: {v3}", f"weight: {v3}")


def _show_routes(snapshot: Snapshot) -> str:
    vs = snapshot.virtual_service("reviews.default.svc.cluster.local")
    if vs is None:
        return "  (no VirtualService for reviews)"
    rows = []
    for route in vs.spec.http:
        match = "any request" if not route.match else "header end-user = jason"
        split = ", ".join(f"{d.destination.subset} {d.weight or 100}%" for d in route.route)
        rows.append([route.name or "-", match, split])
    return "\n".join("  " + line for line in table(["ROUTE", "MATCH", "DESTINATIONS"], rows).splitlines())


def run_demo(keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="meshlib-demo-"))
    print("meshlib demo — an in-process service mesh, configured with Istio YAML\n")
    try:
        server = ConfigServer(work / "config-service").start()
        print(f"1. config service (embedded) on {server.url}; data in {work / 'config-service'}")
        client = ControlPlaneClient(server.url, server.admin_token)
        resources = [item.resource.manifest() for item in load_text(_policy(90, 10), "canary.yaml")]
        result = client.apply(resources)
        for item in result["results"]:
            print(f"   {item['kind']} {item['namespace']}/{item['name']} {item['action']}")

        # The workload proves who it is with a bootstrap token (the config service's default).
        token = client.create_token("productpage")["token"]
        mesh = Mesh(
            "productpage",
            labels={"version": "v1"},
            control_plane=server.url,
            token=token,
            data_dir=work / "productpage",
        )
        with mesh:
            print(f"\n2. workload productpage connected; it applied config version {mesh.version}:")
            print(_show_routes(mesh.snapshot))

            started = time.perf_counter()
            version = client.apply(
                [item.resource.manifest() for item in load_text(_policy(50, 50), "canary.yaml")]
            )["version"]
            mesh.wait_for_version(version, timeout=5)
            elapsed = (time.perf_counter() - started) * 1000
            print(
                f"\n3. canary shifted to 50/50: the workload had version {mesh.version} "
                f"{elapsed:.0f} ms after apply returned:"
            )
            print(_show_routes(mesh.snapshot))
            time.sleep(0.2)  # let the acknowledgement land before showing status
            status = client.workloads()
            rows = [
                [w["registration"]["service"], w["identity"], f"v{w['ackedVersion']}"]
                for w in status["items"]
            ]
            print("\n4. the config service's registry (meshctl status):")
            print(
                "\n".join(
                    "  " + line for line in table(["SERVICE", "IDENTITY", "ACKNOWLEDGED"], rows).splitlines()
                )
            )
        client.close()
        server.stop()

        print("\n5. config service stopped; productpage restarts:")
        with Mesh(
            "productpage",
            control_plane=server.url,
            token=token,
            data_dir=work / "productpage",
            startup_timeout=1.0,
        ) as restarted:
            print(f"   it runs on its {restarted.source} copy, config version {restarted.version}")
        print("\nNext: meshctl serve, then meshctl apply -f examples/policy/ — see README.md.")
        return 0
    finally:
        if keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
