"""``inventory``: a gRPC service (raw bytes, so that it runs as is) served by meshlib_grpc.

    MESH_SERVICE=inventory MESH_CONTROL_PLANE=http://127.0.0.1:15010 MESH_TOKEN=... python inventory.py

``/inventory.Inventory/Check`` takes an item name and answers its stock as JSON. For the demo
a replica can be made faulty: ``INVENTORY_FAILURE_RATE=0.3`` answers UNAVAILABLE to 30% of
calls (every third-or-so call, deterministically), the way a sick replica does.
"""

from __future__ import annotations

import json
import os
import threading

import grpc
import meshlib_grpc

import meshlib

REPLICA = os.environ.get("INVENTORY_REPLICA", "inventory")
FAILURE_RATE = float(os.environ.get("INVENTORY_FAILURE_RATE", "0"))
STOCK = {"book": 12, "lamp": 3, "mug": 40}

_lock = threading.Lock()
_calls = 0


def _fails_now() -> bool:
    """True for the share of calls FAILURE_RATE asks for, spread evenly over the calls."""
    global _calls
    with _lock:
        _calls += 1
        return int(_calls * FAILURE_RATE) > int((_calls - 1) * FAILURE_RATE)


def check(request: bytes, context: grpc.ServicerContext) -> bytes:
    if _fails_now():
        context.abort(grpc.StatusCode.UNAVAILABLE, f"{REPLICA} is having a bad day")
    item = request.decode()
    return json.dumps({"item": item, "stock": STOCK.get(item, 0), "replica": REPLICA}).encode()


def register(server: grpc.Server) -> None:
    handlers = {"Check": grpc.unary_unary_rpc_method_handler(check)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inventory.Inventory", handlers),))


if __name__ == "__main__":
    mesh = meshlib.Mesh.from_env()  # MESH_SERVICE, MESH_CONTROL_PLANE (or MESH_CONFIG), MESH_TOKEN, ...
    meshlib_grpc.serve(register, mesh=mesh, port=int(os.environ.get("PORT", "50051")))
