"""The server side: ASGI and WSGI middleware, the mesh's servers (uvicorn, cheroot), limits."""
