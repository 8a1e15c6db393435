"""A small synchronous client of the config service's /v1 API (used by meshctl)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import httpx

from ..errors import ConfigError, ConfigIssue, ControlPlaneError, UnauthorizedError
from ..policy.resources import ResourceKey

__all__ = ["ControlPlaneClient"]


class ControlPlaneClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 10.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"cannot reach the config service at {self.url}: {exc}") from None
        if response.status_code < 300:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:300]}
        message = body.get("error", response.reason_phrase) if isinstance(body, dict) else str(body)
        if response.status_code == 401:
            raise UnauthorizedError(f"{self.url} refused the request: {message}", status_code=401)
        if response.status_code == 422 and isinstance(body, dict) and body.get("issues"):
            raise ConfigError(ConfigIssue(**issue) for issue in body["issues"])
        raise ControlPlaneError(
            f"{self.url}: {response.status_code} {message}", status_code=response.status_code
        )

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/healthz")
        return result

    def apply(
        self,
        manifests: Sequence[dict[str, Any]],
        *,
        namespace: str = "default",
        dry_run: bool = False,
        strict: bool = False,
    ) -> dict[str, Any]:
        """``results`` per resource stored; ``skipped``: those of kinds meshlib does not apply."""
        body = {"resources": list(manifests), "namespace": namespace, "dryRun": dry_run, "strict": strict}
        result: dict[str, Any] = self._call("POST", "/v1/apply", json=body)
        return result

    def list(self, kind: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("kind", kind), ("namespace", namespace)) if v}
        result: dict[str, Any] = self._call("GET", "/v1/resources", params=params)
        return result

    def get(self, key: ResourceKey) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/resources/{key.kind}/{key.namespace}/{key.name}")
        return result

    def delete(self, key: ResourceKey) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/resources/{key.kind}/{key.namespace}/{key.name}")
        return result

    def create_token(
        self, service: str, namespace: str = "default", ttl: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"service": service, "namespace": namespace}
        if ttl is not None:
            body["ttl"] = ttl
        result: dict[str, Any] = self._call("POST", "/v1/tokens", json=body)
        return result

    def list_tokens(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/tokens")
        return result

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/tokens/{token_id}")
        return result

    def workloads(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/workloads")
        return result

    def workload_summary(self) -> dict[str, int]:
        """How many workloads are synced, stale, not acked, NACKing, lost and connected."""
        result: dict[str, int] = self._call("GET", "/v1/workloads", params={"summary": "true"})
        return result

    def discovery(self) -> dict[str, Any]:
        """Each discovery source's watches (``consul``): state, instances, errors."""
        result: dict[str, Any] = self._call("GET", "/v1/discovery")
        return result

    def edges(self) -> dict[str, Any]:
        """The service graph: one row per edge, from the workloads' latest reports."""
        result: dict[str, Any] = self._call("GET", "/v1/edges")
        return result
