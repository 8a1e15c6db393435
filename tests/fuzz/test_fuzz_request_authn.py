"""Fuzzing the JWT front door (``meshlib.request_authn`` behind the server stack's ``authn``
filter): whatever arrives in ``Authorization``, the ``access_token`` parameter or the cookie,
the answer is the request going on without a principal (no token found), a 401, or, only for a
token signed by a key of the configured JWKS with valid claims, the verified principal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Generator
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meshlib.core.call import Call
from meshlib.core.server_stack import Answer, Inbound, authenticate
from meshlib.policy.loader import load_text
from meshlib.policy.resources import RequestAuthentication
from meshlib.request_authn import Authenticator, JwksCache, compile_authenticator

# The JWKS holds KEY (RSA, kid k1) and EC_KEY (P-256, kid e1); OTHER_KEY is RSA and not in it.
from tests.test_request_authentication import EC_KEY, ISSUER, JWKS, KEY, OTHER_KEY

AUDIENCE = "orders"
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())  # not in the JWKS either
RULE = json.dumps(  # JSON is YAML: what load_text reads
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "default"},
        "spec": {
            "jwtRules": [
                {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks": JWKS,
                    "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}],
                    "fromParams": ["access_token"],
                    "fromCookies": ["session"],
                }
            ]
        },
    }
)


def _authenticator() -> Authenticator:
    resource = load_text(RULE)[0].resource
    assert isinstance(resource, RequestAuthentication)
    check, uris = compile_authenticator([resource], JwksCache())
    assert isinstance(check, Authenticator)
    assert not uris
    return check


AUTHENTICATOR = _authenticator()


def _front_door(authorization: str | None = None, query: str = "", cookie: str | None = None) -> Inbound:
    """The ``authn`` filter run on one request; the Inbound after it (``answer`` in flags)."""
    headers = {"authorization": authorization, "cookie": cookie}
    call = Call("GET", "http", "orders", 80, "/", query, headers.get)
    ex = Inbound(call, time.monotonic, time.monotonic(), lambda: True, authenticate=AUTHENTICATOR)

    def app(_: Inbound) -> Generator[Any, Any, Answer]:
        ex.flags.append("app")
        return Answer(200)
        yield  # a generator, as every filter's next is

    flow = authenticate(ex, app)
    try:
        next(flow)
    except StopIteration as stop:
        answer = stop.value
    else:
        raise AssertionError("the authn filter yielded without a reason")
    assert isinstance(answer, Answer)
    if answer.status == 401:
        assert answer.local
        assert "app" not in ex.flags
        assert ex.request_auth is None
        assert answer.body.strip(), "a 401 says why"
        assert answer.headers == (("www-authenticate", 'Bearer realm="meshlib", error="invalid_token"'),)
    else:
        assert answer.status == 200
        assert "app" in ex.flags
    ex.flags.append(str(answer.status))
    return ex


def _refused(ex: Inbound) -> bool:
    return "401" in ex.flags


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:
        return None


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


VALID = jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k1"})


def test_the_configured_key_is_accepted() -> None:
    """The control every property below leans on: a good token passes the same front door."""
    ex = _front_door(f"Bearer {VALID}")
    assert not _refused(ex)
    assert ex.request_auth is not None
    assert ex.request_auth.principal == f"{ISSUER}/alice"


# --- arbitrary header values, parameters and cookies ----------------------------------------------
_JUNK = st.text(max_size=400) | st.text(st.characters(codec="ascii"), max_size=10 * 1024)
_TOKENISH = st.lists(st.text("ABCabc012-_=+/.", max_size=80), min_size=1, max_size=5).map(".".join)


@given(st.one_of(_JUNK, _TOKENISH.map("Bearer ".__add__), _JUNK.map("Bearer ".__add__)))
@example("Bearer ")
@example("Bearer " + "a" * 10 * 1024)
@example("Bearer a.b.c")
@example("Bearer ..")
@example("Bearer e30.e30.")  # {} . {} . no signature
@example("bearer " + VALID)  # the prefix is case-sensitive: no token found
def test_any_authorization_value_is_no_token_or_a_401(value: str) -> None:
    ex = _front_door(value)
    token = value[len("Bearer ") :].strip() if value.startswith("Bearer ") else ""
    if token:
        assert _refused(ex), value
    else:
        assert not _refused(ex), value
        assert ex.request_auth is None, value


@given(query=st.text(max_size=300), cookie=st.text(max_size=300))
@example(query="access_token=a.b.c&access_token=", cookie='session="x\\"y')
@example(query="access_token=%00", cookie="session=; session=a.b.c")
def test_any_query_and_cookie_are_no_token_or_a_401(query: str, cookie: str) -> None:
    ex = _front_door(None, query, cookie)
    assert ex.request_auth is None, (query, cookie)


# --- token-shaped strings: every way of not being signed by the JWKS --------------------------------
_ALGS = st.sampled_from(["RS256", "RS512", "PS256", "ES256", "EdDSA", "HS256", "none", "NONE", "", "rs256"])
_KIDS = st.one_of(st.none(), st.sampled_from(["k1", "e1", "k2", ""]), st.integers(), st.lists(st.just("k1")))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_CLAIM_VALUES = {
    "iss": st.sampled_from([ISSUER, ISSUER + "/", "", None]) | _JSON,
    "aud": st.sampled_from([AUDIENCE, [AUDIENCE], ["other"], None]) | _JSON,
    "exp": st.sampled_from([None, "soon"]) | st.integers(-(10**20), 10**20) | st.floats(),
    "nbf": st.sampled_from([None]) | st.integers(-(10**12), 10**12),
}


@st.composite
def forged_tokens(draw: st.DrawFn) -> str:
    """A token the JWKS's keys never signed: a foreign key, a symmetric key made of the public
    key, no signature, a random signature, or a valid token's signature under other claims."""
    header: dict[str, Any] = {"typ": "JWT", "alg": draw(_ALGS)}
    kid = draw(_KIDS)
    if kid is not None:
        header["kid"] = kid
    claims = _claims(**{name: draw(values) for name, values in _CLAIM_VALUES.items()})
    if draw(st.booleans()):
        claims.update(draw(st.dictionaries(st.text(max_size=6), _JSON, max_size=3)))
    how = draw(st.sampled_from(["other-rsa", "other-ec", "hmac-public-key", "empty", "random", "stolen"]))
    if how in ("other-rsa", "other-ec"):  # a well-formed signature by a key not in the JWKS
        header["alg"] = "RS256" if how == "other-rsa" else "ES256"
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims, default=str).encode())}"
    if how == "other-rsa":
        return f"{signing}.{_b64(RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing.encode(), OTHER_KEY))}"
    if how == "other-ec":
        return f"{signing}.{_b64(ECAlgorithm(ECAlgorithm.SHA256).sign(signing.encode(), OTHER_EC_KEY))}"
    if how == "hmac-public-key":
        secret = KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"{signing}.{_b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"
    if how == "empty":
        return f"{signing}."
    if how == "random":
        return f"{signing}.{_b64(draw(st.binary(min_size=1, max_size=512)))}"
    return f"{signing}.{VALID.rsplit('.', 1)[1]}"


@given(forged_tokens(), st.sampled_from(["header", "param", "cookie"]))
def test_a_token_the_jwks_did_not_sign_is_refused(token: str, where: str) -> None:
    if where == "header":
        ex = _front_door(f"Bearer {token}")
    elif where == "param":
        ex = _front_door(None, f"access_token={token}")
    else:
        ex = _front_door(None, "", f"session={token}")
    assert _refused(ex), token


@st.composite
def mutated_valid(draw: st.DrawFn) -> str:
    chars = list(VALID)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(chars) - 1))
        chars[at] = draw(st.sampled_from(alphabet))
    return "".join(chars).strip()


@given(mutated_valid())
def test_a_changed_valid_token_is_refused_unless_its_bytes_are_the_same(token: str) -> None:
    """A base64url segment's last character carries spare bits: a change there may decode to the
    same bytes, the same token. Any change to the bytes is refused."""
    ex = _front_door(f"Bearer {token}")
    same = token.count(".") == 2 and all(
        _unb64(mine) is not None and _unb64(mine) == _unb64(theirs)
        for mine, theirs in zip(token.split("."), VALID.split("."), strict=True)
    )
    if not same:
        assert _refused(ex), token


# --- signed by the configured key: accepted exactly when the claims are valid ---------------------
_NOW_OFFSETS = st.sampled_from([None, -7200, -600, 600, 7200])  # never within 60 s skew + 60 s of it


@given(
    exp=_NOW_OFFSETS,
    nbf=_NOW_OFFSETS,
    aud=st.sampled_from([AUDIENCE, [AUDIENCE, "x"], ["x"], "x", None]),
    iss=st.sampled_from([ISSUER, "https://other.example"]),
    signer=st.sampled_from(
        [(KEY, "RS256", "k1"), (KEY, "PS384", "k1"), (EC_KEY, "ES256", "e1"), (KEY, "RS256", None)]
    ),
)
def test_a_token_signed_by_the_jwks_is_accepted_exactly_when_its_claims_hold(
    exp: int | None, nbf: int | None, aud: Any, iss: str, signer: tuple[Any, str, str | None]
) -> None:
    now = int(time.time())
    claims = _claims(
        iss=iss, aud=aud, exp=None if exp is None else now + exp, nbf=None if nbf is None else now + nbf
    )
    key, alg, kid = signer
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)
    ex = _front_door(f"Bearer {token}")
    audience_ok = aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud)
    valid = iss == ISSUER and audience_ok and (exp is None or exp > 0) and (nbf is None or nbf < 0)
    assert _refused(ex) != valid, (claims, alg, kid)
    if valid:
        assert ex.request_auth is not None
        assert ex.request_auth.principal == f"{ISSUER}/alice"
