"""RequestAuthentication: JWTs verified with PyJWT, keys from inline JWKS or a jwksUri cache.

Envoy's jwt_authn semantics, as Istio configures it:

- a token is looked for where a rule says (``fromHeaders``, ``fromParams``, ``fromCookies``;
  by default ``Authorization: Bearer <token>`` and the ``access_token`` query parameter);
- no token: the request goes on without a request principal (an AuthorizationPolicy decides
  whether that is enough); a token that fails verification: 401, the application never runs;
- the token's issuer picks the rule; an issuer no rule names is a failure;
- the signature must verify with a key of the rule's JWKS (the ``kid`` when the token names
  one, an unknown ``kid`` fails); only asymmetric algorithms that fit the key's type are
  taken (RSA: RS*/PS*, EC: ES*, OKP: EdDSA), so ``alg: none`` and HS256 signed with a public
  key fail; ``exp`` and ``nbf`` are checked with Envoy's 60 s clock skew; ``aud`` must name
  one of the rule's ``audiences`` when it lists any;
- on success: ``request.auth.*`` for authorization (principal ``<iss>/<sub>``), the token
  removed from its header unless ``forwardOriginalToken``, ``outputPayloadToHeader`` and
  ``outputClaimToHeaders`` set for the application.

``jwksUri`` keys are fetched in the background (``JwksCache``), with a bounded timeout, kept
when a refresh fails, refreshed every 20 minutes as Istio does; never on the request path.
Until the first fetch succeeds, tokens of that issuer fail (401), as in Envoy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

import httpx
import jwt

from .core.authz import RequestAuth
from .core.server_stack import Inbound
from .policy.resources import RequestAuthentication
from .policy.security import JWTRule

__all__ = ["Authenticator", "JwksCache", "compile_authenticator"]

log = logging.getLogger("meshlib")

CLOCK_SKEW = 60.0  # seconds, Envoy's default
REFRESH_INTERVAL = 20 * 60.0  # Istio's default JWKS refresh interval
FETCH_TIMEOUT = 5.0  # when the rule sets no timeout
MAX_JWKS_BYTES = 1 << 20
VERIFIED_CACHE = 1024  # tokens kept verified per workload and snapshot
_FAMILIES = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512", "ES256K"),
    "OKP": ("EdDSA",),
}


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    algorithms: tuple[str, ...]
    key: Any


def parse_jwks(text: str) -> tuple[_Key, ...]:
    """The usable keys of a JWKS document (symmetric and unknown key types are left out)."""
    document = json.loads(text)
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("a JWKS needs a 'keys' list")
    found = []
    for entry in keys:
        if not isinstance(entry, dict):
            continue
        family = _FAMILIES.get(str(entry.get("kty")))
        if family is None:
            continue  # "oct" (a shared secret) and anything unknown: never a verification key here
        alg = entry.get("alg")
        allowed = (alg,) if isinstance(alg, str) and alg in family else family
        try:
            key = jwt.PyJWK(entry, allowed[0]).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS key %r left out: %s", entry.get("kid"), exc)
            continue
        kid = entry.get("kid")
        found.append(_Key(kid if isinstance(kid, str) else None, allowed, key))
    return tuple(found)


class JwksCache:
    """Keys of every jwksUri in use, fetched and refreshed in the background."""

    def __init__(self, refresh: float = REFRESH_INTERVAL) -> None:
        self._keys: dict[str, tuple[_Key, ...]] = {}
        self._wanted: dict[str, float] = {}  # uri -> fetch timeout
        self._refresh = refresh
        self._lock = threading.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def keys(self, uri: str) -> tuple[_Key, ...] | None:
        return self._keys.get(uri)

    def want(self, uris: Mapping[str, float], loop: asyncio.AbstractEventLoop | None) -> None:
        """Fetch these (uri -> timeout) from now on; called at each snapshot (any thread)."""
        with self._lock:
            self._wanted = dict(uris)
            for uri in list(self._keys):
                if uri not in uris:
                    del self._keys[uri]
        if loop is None:
            return  # not started yet: Mesh.start asks again once its loop runs
        loop.call_soon_threadsafe(self._sync_tasks)

    def _sync_tasks(self) -> None:
        with self._lock:
            wanted = dict(self._wanted)
        for uri, task in list(self._tasks.items()):
            if uri not in wanted:
                task.cancel()
                del self._tasks[uri]
        for uri, timeout in wanted.items():
            if uri not in self._tasks:
                self._tasks[uri] = asyncio.get_running_loop().create_task(
                    self._keep(uri, fetch_timeout=timeout)
                )

    async def _keep(self, uri: str, *, fetch_timeout: float) -> None:
        backoff = 1.0
        async with httpx.AsyncClient(timeout=fetch_timeout, follow_redirects=False) as client:
            while True:
                try:
                    keys = await self._fetch(client, uri)
                except (httpx.HTTPError, ValueError) as exc:
                    reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                    log.warning("could not fetch JWKS %s: %s; retrying in %.0f s", uri, reason, backoff)
                    await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, 60.0)
                    continue
                with self._lock:
                    if uri in self._wanted:
                        self._keys[uri] = keys
                backoff = 1.0
                await asyncio.sleep(self._refresh)

    @staticmethod
    async def _fetch(client: httpx.AsyncClient, uri: str) -> tuple[_Key, ...]:
        async with client.stream("GET", uri) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
        return parse_jwks(body.decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class _Rule:
    issuer: str
    audiences: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]  # (lower-case name, prefix)
    params: tuple[str, ...]
    cookies: tuple[str, ...]
    inline: tuple[_Key, ...] | None
    uri: str | None
    forward: bool
    payload_header: str | None
    claim_headers: tuple[tuple[str, str], ...]
    space_delimited: frozenset[str]  # string claims matched word by word (Envoy: scope, permission)


class Authenticator:
    """The JWT rules of one workload (every RequestAuthentication that applies), compiled."""

    def __init__(self, rules: Sequence[_Rule], cache: JwksCache) -> None:
        self._rules = {r.issuer: r for r in rules}
        self._cache = cache
        self._params = tuple({p: None for r in rules for p in r.params})
        self._cookies = tuple({c: None for r in rules for c in r.cookies})
        # Verified tokens (as Envoy's jwt_cache): a client sends the same token many times, and
        # a signature check costs 20-150 µs. Kept until the token expires; per snapshot.
        self._verified: dict[tuple[str, str | None], tuple[_Rule, dict[str, Any], RequestAuth, float]] = {}

    def __call__(self, ex: Inbound) -> str | None:
        """Verify the request's token, if it has one: None (no token, or verified: ``ex.request_auth``
        set, header edits queued for the application) or why it failed (a 401)."""
        found = self._token(ex)
        if found is None:
            return None
        token, header = found
        cached = self._verified.get(found)
        if cached is not None:
            known, claims, auth, not_after = cached
            if time.time() <= not_after:
                ex.request_auth = auth
                self._outputs(ex, known, token, header, claims)
                return None
            self._verified.pop(found, None)
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return "Jwt is not in the form of Header.Payload.Signature"
        issuer = unverified.get("iss")
        rule = self._rules.get(issuer) if isinstance(issuer, str) else None
        if rule is None or not isinstance(issuer, str):
            return "Jwt issuer is not configured"
        if header is not None and all(header != name for name, _ in rule.headers):
            return "Jwt issuer is not configured"  # this issuer's tokens are not taken from there
        try:
            payload = self._verify(token, rule)
        except _Failure as failure:
            return str(failure)
        auth = ex.request_auth = _request_auth(payload, issuer, rule.space_delimited)
        self._outputs(ex, rule, token, header, payload)
        expires = payload.get("exp")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified[found] = (rule, payload, auth, float(expires) + CLOCK_SKEW)
        return None

    def _token(self, ex: Inbound) -> tuple[str, str | None] | None:
        """The first token found: (token, the header it came in, or None for a param/cookie)."""
        call = ex.call
        for rule in self._rules.values():
            for name, prefix in rule.headers:
                value = call.header(name)
                if value is None:
                    continue
                if prefix:
                    if not value.startswith(prefix):
                        continue
                    value = value[len(prefix) :]
                value = value.strip()
                if value:
                    return value, name
        if self._params and call.query:
            params = dict(parse_qsl(call.query, keep_blank_values=False))
            for name in self._params:
                if params.get(name):
                    return params[name], None
        if self._cookies:
            raw = call.header("cookie")
            if raw:
                try:
                    jar = SimpleCookie(raw)
                except CookieError:
                    jar = SimpleCookie()
                for name in self._cookies:
                    if name in jar and jar[name].value:
                        return jar[name].value, None
        return None

    def _verify(self, token: str, rule: _Rule) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _Failure("Jwt header is an invalid JSON") from exc
        alg = header.get("alg")
        kid = header.get("kid")
        keys = rule.inline if rule.inline is not None else self._cache.keys(rule.uri or "")
        if keys is None:
            raise _Failure("Jwks remote fetch is failed")
        candidates = [k for k in keys if isinstance(alg, str) and alg in k.algorithms]
        if kid is not None:
            candidates = [k for k in candidates if k.kid == kid]
        if not candidates:
            raise _Failure("Jwks doesn't have key to match kid or alg from Jwt")
        options: dict[str, Any] = {"require": ["iss"], "verify_aud": bool(rule.audiences)}
        last: Exception | None = None
        for key in candidates:
            try:
                decoded: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[str(alg)],
                    audience=list(rule.audiences) or None,
                    issuer=rule.issuer,
                    leeway=CLOCK_SKEW,
                    options=options,  # type: ignore[arg-type]
                )
                return decoded
            except jwt.ExpiredSignatureError as exc:
                raise _Failure("Jwt is expired") from exc
            except jwt.ImmatureSignatureError as exc:
                raise _Failure("Jwt not yet valid") from exc
            except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
                if "aud" in str(exc) or isinstance(exc, jwt.InvalidAudienceError):
                    raise _Failure("Audiences in Jwt are not allowed") from exc
                raise _Failure(f"Jwt is missing a claim: {exc}") from exc
            except jwt.InvalidIssuerError as exc:
                raise _Failure("Jwt issuer is not configured") from exc
            except jwt.InvalidTokenError as exc:
                last = exc
        raise _Failure("Jwt verification fails") from last

    @staticmethod
    def _outputs(ex: Inbound, rule: _Rule, token: str, header: str | None, payload: dict[str, Any]) -> None:
        edits = ex.header_edits
        if edits is None:
            edits = ex.header_edits = []
        if header is not None and not rule.forward:
            edits.append((header, None))
        if rule.payload_header:
            encoded = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
            edits.append((rule.payload_header.lower(), encoded.rstrip(b"=").decode()))
        for name, claim in rule.claim_headers:
            value = payload.get(claim)
            if isinstance(value, str | int | float | bool) and not isinstance(value, dict):
                text = ("true" if value else "false") if isinstance(value, bool) else str(value)
                if "\r" not in text and "\n" not in text:
                    edits.append((name.lower(), text))


class _Failure(Exception):
    pass


def _request_auth(payload: Mapping[str, Any], issuer: str, space_delimited: frozenset[str]) -> RequestAuth:
    aud = payload.get("aud")
    if isinstance(aud, str):
        audiences: tuple[str, ...] = (aud,)
    else:
        audiences = tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()
    presenter = payload.get("azp")
    return RequestAuth(
        principal=f"{issuer}/{payload.get('sub', '')}",
        audiences=audiences,
        presenter=presenter if isinstance(presenter, str) else None,
        claims={
            k: v.split() if k in space_delimited and isinstance(v, str) else v for k, v in payload.items()
        },
    )


def _compile_rule(rule: JWTRule) -> _Rule:
    headers = tuple((h.name.lower(), h.prefix or "") for h in rule.from_headers)
    params = rule.from_params
    if not rule.from_headers and not rule.from_params and not rule.from_cookies:
        headers, params = (("authorization", "Bearer "),), ("access_token",)
    return _Rule(
        issuer=rule.issuer,
        audiences=rule.audiences,
        headers=headers,
        params=params,
        cookies=rule.from_cookies,
        inline=parse_jwks(rule.jwks) if rule.jwks is not None else None,
        uri=rule.jwks_uri,
        forward=bool(rule.forward_original_token),
        payload_header=rule.output_payload_to_header,
        claim_headers=tuple((c.header, c.claim) for c in rule.output_claim_to_headers),
        space_delimited=frozenset(("scope", "permission", *rule.space_delimited_claims)),
    )


def compile_authenticator(
    resources: Sequence[RequestAuthentication], cache: JwksCache
) -> tuple[Callable[[Inbound], str | None] | None, dict[str, float]]:
    """The workload's authenticator (None: no rule) and the jwksUris it needs (uri -> timeout)."""
    rules: list[_Rule] = []
    seen: set[str] = set()
    uris: dict[str, float] = {}
    for resource in resources:
        for rule in resource.spec.jwt_rules:
            if rule.issuer in seen:
                continue  # the oldest resource's rule for an issuer wins
            seen.add(rule.issuer)
            try:
                compiled = _compile_rule(rule)
            except ValueError as exc:  # validation parsed it; keep the workload serving
                log.error("RequestAuthentication %s: jwks unusable: %s", resource.key, exc)
                continue
            rules.append(compiled)
            if compiled.uri is not None:
                uris[compiled.uri] = float(rule.timeout) if rule.timeout is not None else FETCH_TIMEOUT
    if not rules:
        return None, uris
    return Authenticator(rules, cache), uris
