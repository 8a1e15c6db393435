"""One replica of ``reviews`` as its own process (so ``kill -9`` is real): meshlib.serve_asgi
in static mode on a given port, answering ``/api`` as its mode says.

    python _replica.py PORT NAME MODE POLICY_FILE DATA_DIR

MODE: ``ok`` answers at once; ``slow=SECONDS`` answers after that long; ``hang`` reads the
request and never answers (it returns when the client goes away). Every answer carries
``x-replica: NAME``. ``/hits`` (never slowed or hung) says how many ``/api`` requests came in.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import meshlib

port, name, mode, policy, data_dir = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
delay = float(mode.partition("=")[2]) if mode.startswith("slow=") else 0.0
hits = 0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global hits
    if scope["path"] == "/hits":
        await answer(send, str(hits).encode())
        return
    hits += 1
    if mode == "hang":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    if delay:
        await asyncio.sleep(delay)
    await answer(send, name.encode())


async def answer(send: Any, body: bytes) -> None:
    headers = [(b"x-replica", name.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


mesh = meshlib.Mesh("reviews", labels={"replica": name}, config=policy, data_dir=data_dir)
meshlib.serve_asgi(app, mesh=mesh, port=int(port), drain_delay=0.1, log_level="error", lifespan="off")
