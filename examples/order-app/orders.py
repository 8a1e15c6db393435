"""``orders``: a Flask service that asks ``inventory`` (gRPC) through the mesh.

    MESH_SERVICE=orders MESH_LABELS=app=orders,version=v1 MESH_CONTROL_PLANE=... python orders.py

``GET /orders/<item>`` answers which version of orders served it and what inventory said.
v1 and v2 are the same code started with another ``version`` label (``ORDERS_VERSION``
names it in the answer); the VirtualService in policy/orders.yaml splits traffic between them.
"""

from __future__ import annotations

import json
import os

import grpc
import meshlib_flask
import meshlib_grpc
from flask import Flask

import meshlib

VERSION = os.environ.get("ORDERS_VERSION", "v1")

app = Flask(__name__)
mesh = meshlib_flask.MeshExtension().init_app(app, meshlib.Mesh.from_env())
# One channel for the process: routed, balanced and retried by the VirtualService for inventory.
check_stock = meshlib_grpc.channel(mesh, "inventory").unary_unary("/inventory.Inventory/Check")


@app.get("/orders/<item>")
def order(item: str) -> tuple[dict[str, object], int]:
    try:
        stock = json.loads(check_stock(item.encode(), timeout=3.0))
    except grpc.RpcError as exc:
        return {"version": VERSION, "error": f"inventory: {exc.code().name} {exc.details()}"}, 503
    return {"version": VERSION, "item": item, "inventory": stock}, 200


if __name__ == "__main__":
    meshlib.serve_wsgi(app, mesh=mesh, port=int(os.environ.get("PORT", "8080")))
