"""The CA's part of the /v1 API.

| method and path            | who              | what                                         |
|----------------------------|------------------|----------------------------------------------|
| POST   /v1/tokens          | admin            | a bootstrap token for one identity (shown once) |
| GET    /v1/tokens          | admin            | tokens, without secrets                      |
| DELETE /v1/tokens/{id}     | admin            | revoke                                       |
| POST   /v1/certificates    | bootstrap token  | sign a CSR as the token's identity           |
| GET    /v1/trust-bundle    | anyone           | the roots workloads trust                    |
"""

from __future__ import annotations

import datetime as dt
import logging

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..ca.authority import CertificateAuthority, CertificateRefused
from ..ca.tokens import TokenError, TokenRegistry
from ..errors import MeshError
from ..policy.base import MeshModel
from ..policy.duration import Duration
from .app import HTTPError, json_errors, parse_model, read_json, require_admin

__all__ = ["ca_routes"]

log = logging.getLogger("meshlib.controlplane")
DEFAULT_TOKEN_TTL = 30 * 24 * 3600.0


class TokenRequest(MeshModel):
    service: str
    namespace: str = "default"
    ttl: Duration = DEFAULT_TOKEN_TTL


class CertificateRequest(MeshModel):
    csr: str = Field(max_length=64 * 1024)
    ttl: Duration | None = None


def ca_routes(ca: CertificateAuthority, tokens: TokenRegistry, admin_token: str) -> list[Route]:
    admin = require_admin(admin_token)

    async def create_token(request: Request) -> Response:
        body = parse_model(TokenRequest, await read_json(request))
        try:
            record, secret = tokens.create(body.service, body.namespace, body.ttl)
        except MeshError as exc:
            raise HTTPError(400, str(exc)) from None
        log.info("bootstrap token %s created for %s/%s", record.id, record.namespace, record.service)
        return JSONResponse(
            {**record.public(), "token": secret, "identity": _identity(ca, record.namespace, record.service)}
        )

    async def list_tokens(request: Request) -> Response:
        return JSONResponse({"items": [t.public() for t in tokens.list()]})

    async def revoke_token(request: Request) -> Response:
        try:
            record = tokens.revoke(request.path_params["id"])
        except MeshError as exc:
            raise HTTPError(404, str(exc)) from None
        log.info("bootstrap token %s revoked", record.id)
        return JSONResponse(record.public())

    async def certificate(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        try:
            record = tokens.verify(secret if scheme.lower() == "bearer" else None)
        except TokenError as exc:
            log.warning("certificate refused: %s", exc)
            return JSONResponse(
                {"error": str(exc)},
                status_code=401,
                headers={"www-authenticate": 'Bearer realm="meshlib-ca"'},
            )
        body = parse_model(CertificateRequest, await read_json(request))
        ttl = dt.timedelta(seconds=body.ttl) if body.ttl is not None else None
        try:
            chain, expires = ca.sign(body.csr, record.namespace, record.service, ttl)
        except CertificateRefused as exc:
            raise HTTPError(400, str(exc)) from None
        return JSONResponse(
            {
                "identity": _identity(ca, record.namespace, record.service),
                "certificateChain": chain,
                "trustBundle": ca.trust_bundle(),
                "expires": expires.isoformat(),
            }
        )

    async def trust_bundle(request: Request) -> Response:
        return JSONResponse({"trustDomain": ca.trust_domain, "roots": ca.trust_bundle()})

    return [
        Route("/v1/tokens", json_errors(admin(create_token)), methods=["POST"]),
        Route("/v1/tokens", json_errors(admin(list_tokens)), methods=["GET"]),
        Route("/v1/tokens/{id}", json_errors(admin(revoke_token)), methods=["DELETE"]),
        Route("/v1/certificates", json_errors(certificate), methods=["POST"]),
        Route("/v1/trust-bundle", json_errors(trust_bundle), methods=["GET"]),
    ]


def _identity(ca: CertificateAuthority, namespace: str, service: str) -> str:
    return f"spiffe://{ca.trust_domain}/ns/{namespace}/sa/{service}"
