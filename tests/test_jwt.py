"""Tests for JWT bearer-token actor resolution: only verified, in-date tokens ever name an actor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_middleware._event import Actor
from audit_middleware._jwt import MAX_TOKEN_CHARS, JWTConfig, JWTVerifier, bearer_token

NOW = 1_700_000_000
SECRET = "test-secret-long-enough-for-hs512-0123456789abcdef0123456789abcdef"
OTHER_SECRET = "another-secret-long-enough-for-hs512-0123456789abcdef0123456789ab"
SECRET_32 = "a-32-byte-secret-good-for-hs256!"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_pem(key: PrivateKey, fmt: serialization.PublicFormat | None = None) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            fmt or serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )


RSA_PUBLIC = public_pem(RSA_KEY)
RSA_PUBLIC_PKCS1 = public_pem(RSA_KEY, serialization.PublicFormat.PKCS1)
RSA_PRIVATE = RSA_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()

HS = JWTConfig(key=SECRET, algorithms=("HS256",))
RS = JWTConfig(key=RSA_PUBLIC, algorithms=("RS256",))
HS_AUD = JWTConfig(key=SECRET, algorithms=("HS256",), audience="api://audit", issuer="https://idp")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def claims_of(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "user_1",
        "email": "ada@example.com",
        "org_id": "org_9",
        "iat": NOW - 10,
        "exp": NOW + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def hs256(key: str = SECRET, alg: str = "HS256", **overrides: Any) -> str:
    return jwt.encode(claims_of(**overrides), key, algorithm=alg)


def signed(key: PrivateKey, alg: str, **overrides: Any) -> str:
    return jwt.encode(claims_of(**overrides), key, algorithm=alg)


def hand_signed(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes) -> str:
    """An HMAC-SHA256 token built by hand, so no library refuses the key we sign with."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def unsigned(alg: str = "none", signature: str = "") -> str:
    return f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims_of())}.{signature}"


def with_payload(token: str, **overrides: Any) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{segment(claims_of(**overrides))}.{signature}"


def with_signature_of(token: str, other: str) -> str:
    return token.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]


def padded(target_chars: int) -> str:
    """A validly signed HS256 token of about ``target_chars`` characters."""
    token = hs256()
    pad = "x" * max(0, (target_chars - len(token)) * 3 // 4)
    return hs256(pad=pad)


# --- valid tokens ------------------------------------------------------------------------------


def test_valid_hs256_token_names_actor_and_org() -> None:
    verifier = JWTVerifier(HS)
    claims = verifier.claims(hs256(), now=NOW)
    assert claims is not None
    assert claims["sub"] == "user_1"
    assert verifier.actor(claims) == Actor(id="user_1", type="user", email="ada@example.com")
    assert verifier.org(claims) == "org_9"


@pytest.mark.parametrize(
    ("alg", "private"),
    [
        pytest.param("RS256", RSA_KEY, id="rs256"),
        pytest.param("RS512", RSA_KEY, id="rs512"),
        pytest.param("PS256", RSA_KEY, id="ps256"),
        pytest.param("ES256", EC_KEY, id="es256"),
        pytest.param("EdDSA", ED_KEY, id="eddsa"),
    ],
)
def test_valid_asymmetric_token_names_actor(alg: str, private: PrivateKey) -> None:
    verifier = JWTVerifier(JWTConfig(key=public_pem(private), algorithms=(alg,)))
    claims = verifier.claims(signed(private, alg), now=NOW)
    assert claims is not None
    assert verifier.actor(claims) == Actor(id="user_1", email="ada@example.com")


def test_rsa_public_key_in_pkcs1_form_and_bytes() -> None:
    for key in (RSA_PUBLIC_PKCS1, RSA_PUBLIC.encode()):
        verifier = JWTVerifier(JWTConfig(key=key, algorithms=("RS256",)))
        assert verifier.claims(signed(RSA_KEY, "RS256"), now=NOW) is not None


def test_audience_and_issuer_accepted_when_matching() -> None:
    token = hs256(aud=["other", "api://audit"], iss="https://idp")
    assert JWTVerifier(HS_AUD).claims(token, now=NOW) is not None


def test_claims_are_read_only() -> None:
    claims = JWTVerifier(HS).claims(hs256(), now=NOW)
    assert claims is not None
    with pytest.raises(TypeError):
        claims["sub"] = "admin"  # type: ignore[index]


def test_default_now_is_the_clock() -> None:
    verifier = JWTVerifier(HS)
    fresh = hs256(iat=int(time.time()) - 5, exp=int(time.time()) + 600)
    assert verifier.claims(fresh) is not None
    assert verifier.claims(hs256()) is None  # expired in 2023


# --- tokens that must never yield an actor -----------------------------------------------------

GOOD = hs256()
RS_GOOD = signed(RSA_KEY, "RS256")


@pytest.mark.parametrize(
    ("config", "token"),
    [
        pytest.param(HS, with_signature_of(GOOD, hs256(OTHER_SECRET, sub="x")), id="forged-sig"),
        pytest.param(
            HS, GOOD[:-4] + ("AAAA" if not GOOD.endswith("AAAA") else "BBBB"), id="bad-sig"
        ),
        pytest.param(HS, hs256(OTHER_SECRET), id="wrong-secret"),
        pytest.param(HS, with_payload(GOOD, sub="admin"), id="tampered-payload"),
        pytest.param(HS, with_payload(GOOD, exp=NOW + 10**6), id="tampered-exp"),
        pytest.param(RS, signed(OTHER_RSA_KEY, "RS256"), id="wrong-rsa-key"),
        pytest.param(RS, with_payload(RS_GOOD, sub="admin"), id="rs-tampered-payload"),
        # alg "none": unsigned, whatever the config allows.
        pytest.param(HS, unsigned(), id="alg-none"),
        pytest.param(HS, unsigned("None"), id="alg-None"),
        pytest.param(HS, unsigned("NONE"), id="alg-NONE"),
        pytest.param(HS, unsigned(signature="AAAA"), id="alg-none-junk-sig"),
        pytest.param(RS, unsigned(), id="alg-none-rs-config"),
        # Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
        pytest.param(
            RS,
            hand_signed({"alg": "HS256", "typ": "JWT"}, claims_of(), RSA_PUBLIC.encode()),
            id="hs256-with-rsa-public-key",
        ),
        pytest.param(
            RS,
            hand_signed({"alg": "HS256", "typ": "JWT"}, claims_of(), RSA_PUBLIC_PKCS1.encode()),
            id="hs256-with-rsa-pkcs1-key",
        ),
        # Algorithm outside the allow-list, even with the right key.
        pytest.param(HS, hs256(alg="HS512"), id="hs512-not-allowed"),
        pytest.param(HS, signed(RSA_KEY, "RS256"), id="rs256-against-hs-config"),
        pytest.param(RS, signed(RSA_KEY, "PS256"), id="ps256-not-allowed"),
        # Time claims.
        pytest.param(HS, hs256(exp=...), id="missing-exp"),
        pytest.param(HS, hs256(exp=None), id="null-exp"),
        pytest.param(HS, hs256(exp=NOW - 1), id="expired"),
        pytest.param(HS, hs256(exp=NOW), id="expires-now"),
        pytest.param(HS, hs256(exp=str(NOW + 3600)), id="exp-string"),
        pytest.param(HS, hs256(exp=True), id="exp-bool"),
        pytest.param(HS, hs256(exp=float("nan")), id="exp-nan"),
        pytest.param(HS, hs256(exp=float("inf")), id="exp-infinity"),
        pytest.param(HS, hs256(nbf=NOW + 60), id="nbf-future"),
        pytest.param(HS, hs256(nbf="0"), id="nbf-string"),
        pytest.param(HS, hs256(iat=NOW + 60), id="iat-future"),
        # Audience and issuer.
        pytest.param(HS_AUD, hs256(aud="api://other", iss="https://idp"), id="wrong-audience"),
        pytest.param(HS_AUD, hs256(iss="https://idp"), id="missing-audience"),
        pytest.param(HS_AUD, hs256(aud="api://audit", iss="https://evil"), id="wrong-issuer"),
        pytest.param(HS_AUD, hs256(aud="api://audit"), id="missing-issuer"),
        pytest.param(HS, hs256(aud="api://audit"), id="audience-not-configured"),
        # Identity claim.
        pytest.param(HS, hs256(sub=...), id="missing-id-claim"),
        pytest.param(HS, hs256(sub=None), id="null-id-claim"),
        # Shape and size.
        pytest.param(HS, padded(MAX_TOKEN_CHARS + 1024), id="9-kib"),
        pytest.param(HS, GOOD + "\n", id="trailing-newline"),
        pytest.param(HS, " " + GOOD, id="leading-space"),
        pytest.param(HS, GOOD + "é", id="non-ascii-suffix"),
        pytest.param(HS, GOOD.replace(".", ".é", 1), id="non-ascii-inside"),
        pytest.param(HS, GOOD + ".", id="four-segments"),
        pytest.param(HS, GOOD.rsplit(".", 1)[0], id="two-segments"),
        pytest.param(HS, "", id="empty"),
        pytest.param(HS, "not a token", id="words"),
        pytest.param(HS, "a.b.c", id="tiny-segments"),
        pytest.param(HS, "...", id="dots"),
        pytest.param(HS, "ü.ü.ü", id="non-ascii"),
        pytest.param(HS, "\x00\x01.\x02.\x03", id="control-chars"),
        pytest.param(HS, segment([1, 2]) + "." + segment({}) + ".AAAA", id="header-not-object"),
        pytest.param(HS, segment({"alg": "HS256"}) + ".bm90IGpzb24.AAAA", id="payload-not-json"),
    ],
)
def test_rejected_tokens_yield_nothing(config: JWTConfig, token: str) -> None:
    verifier = JWTVerifier(config)
    assert verifier.claims(token, now=NOW) is None
    assert verifier.claims(token, now=NOW) is None  # and not after a cache round trip


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="none"),
        pytest.param(123, id="int"),
        pytest.param(GOOD.encode(), id="bytes"),
        pytest.param(["a", "b"], id="list"),
    ],
)
def test_non_str_tokens_yield_nothing(token: Any) -> None:
    assert JWTVerifier(HS).claims(token, now=NOW) is None


@pytest.mark.parametrize(
    "now",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(True, id="bool"),
        pytest.param("1700000000", id="str"),
    ],
)
def test_garbage_now_yields_nothing(now: Any) -> None:
    assert JWTVerifier(HS).claims(GOOD, now=now) is None


def test_size_limit_is_the_only_difference() -> None:
    verifier = JWTVerifier(HS)
    near = padded(MAX_TOKEN_CHARS - 200)
    over = padded(MAX_TOKEN_CHARS + 1024)
    assert len(near) <= MAX_TOKEN_CHARS < len(over)
    assert verifier.claims(near, now=NOW) is not None
    assert verifier.claims(over, now=NOW) is None


# --- time is checked against the caller's "now", on every call ---------------------------------


@pytest.mark.parametrize(
    ("now", "valid"),
    [
        pytest.param(NOW - 5, True, id="well-before-exp"),
        pytest.param(NOW + 59, True, id="just-before-exp"),
        pytest.param(NOW + 60, False, id="at-exp"),
        pytest.param(NOW + 10**6, False, id="long-after-exp"),
        pytest.param(NOW - 11, False, id="before-iat"),
    ],
)
def test_expiry_is_checked_against_now(now: float, valid: bool) -> None:
    token = hs256(exp=NOW + 60)
    assert (JWTVerifier(HS).claims(token, now=now) is not None) is valid


def test_cached_token_still_expires() -> None:
    verifier = JWTVerifier(HS)
    token = hs256(exp=NOW + 60)
    assert verifier.claims(token, now=NOW) is not None
    assert verifier.claims(token, now=NOW + 61) is None  # cached, but expired at this time
    assert verifier.claims(token, now=NOW + 30) is not None  # an earlier event is still fine


def test_cached_token_still_not_yet_valid() -> None:
    verifier = JWTVerifier(HS)
    token = hs256(nbf=NOW + 100, iat=NOW)
    assert verifier.claims(token, now=NOW + 200) is not None
    assert verifier.claims(token, now=NOW + 50) is None


@pytest.mark.parametrize(
    ("overrides", "now", "valid"),
    [
        pytest.param({"exp": NOW}, NOW + 29, True, id="exp-within-leeway"),
        pytest.param({"exp": NOW}, NOW + 30, False, id="exp-at-leeway"),
        pytest.param({"nbf": NOW + 25}, NOW, True, id="nbf-within-leeway"),
        pytest.param({"nbf": NOW + 31}, NOW, False, id="nbf-beyond-leeway"),
        pytest.param({"iat": NOW + 25}, NOW, True, id="iat-within-leeway"),
        pytest.param({"iat": NOW + 31}, NOW, False, id="iat-beyond-leeway"),
    ],
)
def test_leeway(overrides: dict[str, Any], now: float, valid: bool) -> None:
    verifier = JWTVerifier(JWTConfig(key=SECRET, algorithms=("HS256",), leeway_seconds=30))
    assert (verifier.claims(hs256(**overrides), now=now) is not None) is valid


# --- the cache -------------------------------------------------------------------------------


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every token PyJWT is asked to verify."""
    calls: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


def test_same_token_is_verified_once(decode_calls: list[str]) -> None:
    verifier = JWTVerifier(HS)
    for _ in range(5):
        assert verifier.claims(GOOD, now=NOW) is not None
    assert decode_calls == [GOOD]


def test_cache_is_bounded_lru(decode_calls: list[str]) -> None:
    verifier = JWTVerifier(HS, cache_size=2)
    a, b, c = hs256(sub="a"), hs256(sub="b"), hs256(sub="c")
    for token in (a, b, a, c, a, b):
        assert verifier.claims(token, now=NOW) is not None
    # a stays hot; c evicts b; b is verified again.
    assert decode_calls == [a, b, c, b]


def test_cache_can_be_disabled(decode_calls: list[str]) -> None:
    verifier = JWTVerifier(HS, cache_size=0)
    verifier.claims(GOOD, now=NOW)
    verifier.claims(GOOD, now=NOW)
    assert decode_calls == [GOOD, GOOD]


def test_failures_are_not_cached(decode_calls: list[str]) -> None:
    verifier = JWTVerifier(HS)
    forged = hs256(OTHER_SECRET)
    assert verifier.claims(forged, now=NOW) is None
    assert verifier.claims(forged, now=NOW) is None
    assert decode_calls == [forged, forged]


def test_cache_is_thread_safe() -> None:
    verifier = JWTVerifier(HS, cache_size=3)
    tokens = {f"user_{i}": hs256(sub=f"user_{i}") for i in range(8)}
    forged = hs256(OTHER_SECRET)
    errors: list[str] = []

    def worker() -> None:
        for _ in range(50):
            for sub, token in tokens.items():
                claims = verifier.claims(token, now=NOW)
                if claims is None or claims["sub"] != sub:
                    errors.append(sub)
            if verifier.claims(forged, now=NOW) is not None:
                errors.append("forged")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- actor and org -----------------------------------------------------------------------------

TYPED = JWTConfig(key=SECRET, algorithms=("HS256",), type_claim="kind")
CUSTOM = JWTConfig(
    key=SECRET,
    algorithms=("HS256",),
    id_claim="uid",
    email_claim="mail",
    org_claim="tenant",
)


@pytest.mark.parametrize(
    ("config", "claims", "expected"),
    [
        pytest.param(HS, {"sub": "u1"}, Actor(id="u1"), id="id-only"),
        pytest.param(HS, {"sub": 42}, Actor(id="42"), id="int-id"),
        pytest.param(HS, {"sub": -7}, Actor(id="-7"), id="negative-int-id"),
        pytest.param(HS, {"sub": "x" * 256}, Actor(id="x" * 256), id="id-256"),
        pytest.param(HS, {"sub": "x" * 257}, None, id="id-too-long"),
        pytest.param(HS, {"sub": 10**300}, None, id="int-id-too-long"),
        pytest.param(HS, {"sub": ""}, None, id="empty-id"),
        pytest.param(HS, {"sub": "  "}, None, id="blank-id"),
        pytest.param(HS, {"sub": True}, None, id="bool-id"),
        pytest.param(HS, {"sub": 1.5}, None, id="float-id"),
        pytest.param(HS, {"sub": ["u1"]}, None, id="list-id"),
        pytest.param(HS, {"sub": None}, None, id="null-id"),
        pytest.param(HS, {}, None, id="missing-id"),
        pytest.param(
            HS,
            {"sub": "u1", "email": "a@example.com"},
            Actor(id="u1", email="a@example.com"),
            id="email",
        ),
        pytest.param(
            HS,
            {"sub": "u1", "email": "a" * 308 + "@example.com"},
            Actor(id="u1", email="a" * 308 + "@example.com"),
            id="email-320",
        ),
        pytest.param(
            HS, {"sub": "u1", "email": "a" * 309 + "@example.com"}, Actor(id="u1"), id="email-long"
        ),
        pytest.param(HS, {"sub": "u1", "email": 5}, Actor(id="u1"), id="email-not-str"),
        pytest.param(HS, {"sub": "u1", "email": ""}, Actor(id="u1"), id="email-empty"),
        pytest.param(
            TYPED, {"sub": "s", "kind": "service"}, Actor(id="s", type="service"), id="service"
        ),
        pytest.param(
            TYPED, {"sub": "k", "kind": "api_key"}, Actor(id="k", type="api_key"), id="api-key"
        ),
        pytest.param(TYPED, {"sub": "u", "kind": "user"}, Actor(id="u"), id="user"),
        pytest.param(TYPED, {"sub": "u", "kind": "anonymous"}, Actor(id="u"), id="anonymous"),
        pytest.param(TYPED, {"sub": "u", "kind": "admin"}, Actor(id="u"), id="unknown-type"),
        pytest.param(TYPED, {"sub": "u", "kind": ["service"]}, Actor(id="u"), id="type-list"),
        pytest.param(HS, {"sub": "u", "kind": "service"}, Actor(id="u"), id="no-type-claim"),
        pytest.param(
            CUSTOM,
            {"sub": "ignored", "uid": "u9", "mail": "m@example.com", "email": "no@example.com"},
            Actor(id="u9", email="m@example.com"),
            id="custom-claims",
        ),
        pytest.param(CUSTOM, {"sub": "ignored"}, None, id="custom-id-missing"),
    ],
)
def test_actor(config: JWTConfig, claims: dict[str, Any], expected: Actor | None) -> None:
    assert JWTVerifier(config).actor(claims) == expected


@pytest.mark.parametrize(
    ("config", "claims", "expected"),
    [
        pytest.param(HS, {"org_id": "org_1"}, "org_1", id="str"),
        pytest.param(HS, {"org_id": 17}, "17", id="int"),
        pytest.param(HS, {"org_id": "o" * 256}, "o" * 256, id="org-256"),
        pytest.param(HS, {"org_id": "o" * 257}, None, id="org-too-long"),
        pytest.param(HS, {"org_id": True}, None, id="bool"),
        pytest.param(HS, {"org_id": ""}, None, id="empty"),
        pytest.param(HS, {"org_id": {"id": 1}}, None, id="object"),
        pytest.param(HS, {}, None, id="missing"),
        pytest.param(CUSTOM, {"tenant": "t1", "org_id": "o1"}, "t1", id="custom-claim"),
        pytest.param(
            JWTConfig(key=SECRET, algorithms=("HS256",), org_claim=None),
            {"org_id": "o1"},
            None,
            id="org-claim-disabled",
        ),
    ],
)
def test_org(config: JWTConfig, claims: dict[str, Any], expected: str | None) -> None:
    assert JWTVerifier(config).org(claims) == expected


def test_actor_and_org_tolerate_garbage_mappings() -> None:
    verifier = JWTVerifier(HS)
    garbage: Any = ["not", "a", "mapping"]
    assert verifier.actor(garbage) is None
    assert verifier.org(garbage) is None


def test_int_sub_end_to_end() -> None:
    verifier = JWTVerifier(HS)
    claims = verifier.claims(hs256(sub=12345, org_id=77), now=NOW)
    assert claims is not None
    assert verifier.actor(claims) == Actor(id="12345", email="ada@example.com")
    assert verifier.org(claims) == "77"


def test_type_claim_end_to_end() -> None:
    verifier = JWTVerifier(TYPED)
    claims = verifier.claims(hs256(sub="svc_1", kind="service", email=...), now=NOW)
    assert claims is not None
    assert verifier.actor(claims) == Actor(id="svc_1", type="service")


# --- configuration -----------------------------------------------------------------------------

CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"algorithms": ()}, "non-empty tuple", id="no-algorithms"),
        pytest.param({"algorithms": ["HS256"]}, "non-empty tuple", id="algorithms-list"),
        pytest.param({"algorithms": "HS256"}, "non-empty tuple", id="algorithms-str"),
        pytest.param({"algorithms": (256,)}, "must hold strings", id="algorithm-not-str"),
        pytest.param({"algorithms": ("none",)}, "'none'", id="none"),
        pytest.param({"algorithms": ("None",)}, "'none'", id="None"),
        pytest.param({"algorithms": ("HS256", "NONE")}, "'none'", id="HS256-and-NONE"),
        pytest.param({"algorithms": ("hs256",)}, "unknown JWT algorithm", id="lowercase"),
        pytest.param({"algorithms": ("RS-256",)}, "unknown JWT algorithm", id="typo"),
        pytest.param({"algorithms": ("HS256", "RS256")}, "algorithm confusion", id="mixed-hs-rs"),
        pytest.param({"algorithms": ("ES256", "HS512")}, "algorithm confusion", id="mixed-es-hs"),
        pytest.param({"key": ""}, "must not be empty", id="empty-key"),
        pytest.param({"key": b"  \n"}, "must not be empty", id="blank-key"),
        pytest.param({"key": 12345}, "str or bytes", id="int-key"),
        pytest.param({"key": RSA_PUBLIC}, "algorithm confusion", id="hs256-with-public-pem"),
        pytest.param(
            {"key": RSA_PUBLIC.encode()}, "algorithm confusion", id="hs256-with-public-pem-bytes"
        ),
        pytest.param(
            {"key": RSA_PUBLIC_PKCS1}, "algorithm confusion", id="hs256-with-rsa-public-key"
        ),
        pytest.param({"key": CERTIFICATE}, "algorithm confusion", id="hs256-with-certificate"),
        pytest.param(
            {"key": "\n  " + RSA_PUBLIC}, "algorithm confusion", id="hs256-with-indented-pem"
        ),
        pytest.param(
            {"key": "ssh-rsa AAAAB3NzaC1yc2E user@host"},
            "algorithm confusion",
            id="hs256-with-ssh-key",
        ),
        pytest.param({"key": RSA_PRIVATE}, "private key", id="hs256-with-private-key"),
        pytest.param(
            {"key": RSA_PRIVATE, "algorithms": ("RS256",)}, "private key", id="rs256-private-key"
        ),
        pytest.param({"leeway_seconds": -1}, "leeway", id="negative-leeway"),
        pytest.param({"leeway_seconds": 301}, "leeway", id="huge-leeway"),
        pytest.param({"leeway_seconds": float("nan")}, "leeway", id="nan-leeway"),
        pytest.param({"leeway_seconds": True}, "leeway", id="bool-leeway"),
        pytest.param({"audience": ""}, "audience", id="empty-audience"),
        pytest.param({"issuer": 5}, "issuer", id="int-issuer"),
        pytest.param({"id_claim": ""}, "id_claim", id="empty-id-claim"),
        pytest.param({"org_claim": ""}, "org_claim", id="empty-org-claim"),
        pytest.param({"type_claim": 1}, "type_claim", id="int-type-claim"),
    ],
)
def test_config_refuses(kwargs: dict[str, Any], message: str) -> None:
    params: dict[str, Any] = {"key": SECRET, "algorithms": ("HS256",), **kwargs}
    with pytest.raises(ValueError, match=message):
        JWTConfig(**params)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            JWTConfig(key=SECRET, algorithms=("RS256",)), "not usable with RS256", id="rs-secret"
        ),
        pytest.param(
            JWTConfig(key=RSA_PUBLIC, algorithms=("RS256", "ES256")),
            "not usable with ES256",
            id="rsa-key-for-es256",
        ),
        pytest.param(
            JWTConfig(key="short-secret", algorithms=("HS256",)), "too weak", id="short-secret"
        ),
        pytest.param(
            JWTConfig(key=SECRET_32, algorithms=("HS512",)), "too weak", id="secret-short-for-hs512"
        ),
        pytest.param(
            JWTConfig(
                key=public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
                algorithms=("RS256",),
            ),
            "too weak",
            id="rsa-1024",
        ),
    ],
)
def test_verifier_refuses_unusable_keys(config: JWTConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JWTVerifier(config)


@pytest.mark.parametrize(
    "cache_size", [pytest.param(-1, id="negative"), pytest.param(1.5, id="float")]
)
def test_verifier_refuses_bad_cache_size(cache_size: Any) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        JWTVerifier(HS, cache_size=cache_size)


def test_related_asymmetric_algorithms_share_a_key() -> None:
    verifier = JWTVerifier(JWTConfig(key=RSA_PUBLIC, algorithms=("RS256", "PS256")))
    assert verifier.claims(signed(RSA_KEY, "RS256"), now=NOW) is not None
    assert verifier.claims(signed(RSA_KEY, "PS256"), now=NOW) is not None


def test_repr_hides_the_key() -> None:
    assert SECRET not in repr(JWTVerifier(HS))


# --- optional dependency -----------------------------------------------------------------------


def test_importing_the_module_does_not_import_pyjwt() -> None:
    code = "import sys, audit_middleware._jwt; sys.exit('jwt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_missing_pyjwt_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)
    with pytest.raises(ImportError) as info:
        JWTVerifier(HS)
    assert str(info.value) == (
        "JWT actor resolution needs PyJWT: pip install 'audit-log-middleware[jwt]'"
    )


# --- bearer_token ------------------------------------------------------------------------------

AUTH = b"authorization"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([(AUTH, b"Bearer abc.def.ghi")], "abc.def.ghi", id="bearer"),
        pytest.param([(AUTH, b"bearer abc")], "abc", id="lowercase-scheme"),
        pytest.param([(AUTH, b"BEARER abc")], "abc", id="uppercase-scheme"),
        pytest.param([(AUTH, b"  Bearer \t abc  ")], "abc", id="extra-whitespace"),
        pytest.param([(AUTH, b"Bearer\tabc")], "abc", id="tab-separator"),
        pytest.param([(b"Authorization", b"Bearer abc")], "abc", id="mixed-case-name"),
        pytest.param(
            [(b"host", b"x"), (AUTH, b"Bearer abc"), (b"accept", b"*/*")], "abc", id="among-others"
        ),
        pytest.param([(AUTH, b"Bearer caf\xe9")], "caf\xe9", id="latin-1"),
        pytest.param([(AUTH, b"Basic dXNlcjpwYXNz")], None, id="basic"),
        pytest.param([(AUTH, b"Bearer")], None, id="scheme-only"),
        pytest.param([(AUTH, b"Bearer   ")], None, id="empty-token"),
        pytest.param([(AUTH, b"Bearerabc")], None, id="no-separator"),
        pytest.param([(AUTH, b"Token abc")], None, id="other-scheme"),
        pytest.param([(AUTH, b"")], None, id="empty-value"),
        pytest.param([], None, id="no-headers"),
        pytest.param([(b"x-authorization", b"Bearer abc")], None, id="other-header"),
        # Several authorization headers: the first decides, as in the app's own framework.
        pytest.param([(AUTH, b"Bearer one"), (AUTH, b"Bearer two")], "one", id="two-bearers"),
        pytest.param(
            [(AUTH, b"Basic dXNlcjpwYXNz"), (AUTH, b"Bearer two")], None, id="basic-first"
        ),
        pytest.param([(AUTH, b"\xff\xfe\x00\x01")], None, id="binary-junk"),
        pytest.param([(AUTH, b"Bearer \x00\xff")], "\x00\xff", id="binary-token"),
    ],
)
def test_bearer_token(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert bearer_token(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param([None, 3, (AUTH,), (AUTH, b"a", b"b")], id="malformed-items"),
        pytest.param([("authorization", "Bearer abc")], id="str-pairs"),
        pytest.param([(AUTH, "Bearer abc")], id="str-value"),
        pytest.param([(AUTH, None)], id="none-value"),
    ],
)
def test_bearer_token_tolerates_garbage(headers: Any) -> None:
    assert bearer_token(headers) is None


def test_bearer_token_then_claims() -> None:
    verifier = JWTVerifier(HS)
    token = bearer_token([(AUTH, b"Bearer " + GOOD.encode())])
    assert token is not None
    claims = verifier.claims(token, now=NOW)
    assert claims is not None
    assert verifier.actor(claims) == Actor(id="user_1", email="ada@example.com")


# --- properties --------------------------------------------------------------------------------

PROPERTY_VERIFIER = JWTVerifier(HS)
JWS_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_verifies(token: str) -> None:
    assert PROPERTY_VERIFIER.claims(token, now=NOW) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=JWS_ALPHABET, min_size=5))
def test_arbitrary_token_shaped_text_never_verifies(token: str) -> None:
    assert PROPERTY_VERIFIER.claims(token, now=NOW) is None


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
    payload=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
    signature=st.binary(max_size=64),
)
def test_arbitrary_json_segments_never_verify(
    header: dict[str, str], payload: dict[str, Any], signature: bytes
) -> None:
    token = f"{segment(header)}.{segment(payload)}.{b64url(signature)}"
    assert PROPERTY_VERIFIER.claims(token, now=NOW) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=5))
def test_bearer_token_never_raises(headers: list[tuple[bytes, bytes]]) -> None:
    result = bearer_token(headers)
    assert result is None or isinstance(result, str)


def test_helpers_build_what_they_claim() -> None:
    """The hand-made tokens above really are what their test ids say."""
    none_header = json.loads(base64.urlsafe_b64decode(unsigned().split(".")[0] + "=="))
    assert none_header == {"alg": "none", "typ": "JWT"}
    assert unsigned().endswith(".")
    confused = hand_signed({"alg": "HS256"}, claims_of(), RSA_PUBLIC.encode())
    assert jwt.get_unverified_header(confused)["alg"] == "HS256"
    # Without signature checks the confused token decodes: only verification stops it.
    assert jwt.decode(confused, options={"verify_signature": False})["sub"] == "user_1"
    assert len(padded(MAX_TOKEN_CHARS + 1024)) > MAX_TOKEN_CHARS + 512
