"""Actor resolution from a JWT bearer token, for apps that know nothing of this library.

Defends against: forged or tampered tokens and tokens signed with another key (the signature is
always verified with the configured key, and only the configured algorithms are accepted);
unsigned tokens (``alg: none`` can never be configured nor accepted); algorithm confusion, such
as an RS256 public key used as an HS256 secret (HS* algorithms may not be mixed with asymmetric
ones, and a PEM/SSH public key or certificate is refused as an HMAC secret); expired,
not-yet-valid, wrong-audience or wrong-issuer tokens (``exp`` is required and every time check
runs against the event's own time, on every call, cached or not); and huge or malformed tokens
(anything over 8 KiB or not shaped like a signed compact JWS is rejected before parsing).
Does not defend against: a stolen but still valid token (it names its rightful owner, which is
all a bearer token can say); a leaked signing key (whoever holds it mints tokens we must
accept); nor a short HMAC secret brute-forced offline, beyond refusing secrets shorter than
RFC 7518 requires. The resolved actor is only as trustworthy as the token issuer.

PyJWT is an optional dependency (the ``[jwt]`` extra): it is imported when a
:class:`JWTVerifier` is built, never when this module is imported.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Final

from audit_middleware._event import Actor, ActorType

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = ["JWTConfig", "JWTVerifier", "bearer_token"]

MAX_TOKEN_CHARS: Final = 8 * 1024
MAX_ID_CHARS: Final = 256
MAX_EMAIL_CHARS: Final = 320
MAX_LEEWAY_SECONDS: Final = 300.0

_INSTALL_HINT: Final = "JWT actor resolution needs PyJWT: pip install 'audit-log-middleware[jwt]'"

_HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES256K",
        "ES384",
        "ES512",
        "ES521",
        "EdDSA",
    }
)
# Header segment, payload segment, non-empty signature: an unsigned token never gets parsed.
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Things that are not HMAC secrets: PEM armour (public/private keys, certificates), SSH keys.
_ASYMMETRIC_KEY_MARKERS: Final = (
    b"-----BEGIN",
    b"ssh-rsa ",
    b"ssh-ed25519 ",
    b"ssh-dss ",
    b"ecdsa-sha2-",
)
_ACTOR_TYPES: Final[Mapping[str, ActorType]] = MappingProxyType(
    {"user": "user", "api_key": "api_key", "service": "service"}
)
_AUTH_SEPARATOR: Final = re.compile(r"[ \t]+")


@dataclass(frozen=True, slots=True)
class JWTConfig:
    """How to verify bearer tokens and which claims name the actor.

    ``key`` is the HMAC secret for HS256/384/512, or the PEM *public* key for RS*/PS*/ES*/EdDSA.
    ``algorithms`` is the explicit allow-list; the token's own ``alg`` header is only ever
    checked against it. With ``audience`` / ``issuer`` unset, a token carrying an ``aud`` claim
    is rejected (PyJWT's rule: we cannot tell whether we are its audience). ``type_claim``
    names a claim whose value (``user``, ``api_key`` or ``service``) becomes the actor type.
    ``leeway_seconds`` (0-300) absorbs clock skew in the ``exp`` / ``nbf`` / ``iat`` checks.
    """

    key: str | bytes
    algorithms: tuple[str, ...]
    audience: str | None = None
    issuer: str | None = None
    id_claim: str = "sub"
    email_claim: str = "email"
    org_claim: str | None = "org_id"
    type_claim: str | None = None
    leeway_seconds: float = 0.0

    def __post_init__(self) -> None:
        self._check_algorithms()
        self._check_key()
        for name in ("audience", "issuer", "org_claim", "type_claim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"JWTConfig.{name} must be a non-empty string or None")
        for name in ("id_claim", "email_claim"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"JWTConfig.{name} must be a non-empty string")
        leeway = self.leeway_seconds
        if (
            isinstance(leeway, bool)
            or not isinstance(leeway, (int, float))
            or not 0 <= leeway <= MAX_LEEWAY_SECONDS
        ):
            raise ValueError(
                f"JWTConfig.leeway_seconds must be a number from 0 to {MAX_LEEWAY_SECONDS:g}, "
                f"got {leeway!r}"
            )

    def _check_algorithms(self) -> None:
        algorithms = self.algorithms
        if not isinstance(algorithms, tuple) or not algorithms:
            raise ValueError(
                "JWTConfig.algorithms must be a non-empty tuple of algorithm names, "
                f"e.g. ('RS256',), got {algorithms!r}"
            )
        for alg in algorithms:
            if not isinstance(alg, str):
                raise ValueError(f"JWTConfig.algorithms must hold strings, got {alg!r}")
            if alg.strip().lower() == "none":
                raise ValueError(
                    "JWTConfig.algorithms must not include 'none': unsigned tokens prove nothing"
                )
            if alg not in _HMAC_ALGORITHMS and alg not in _ASYMMETRIC_ALGORITHMS:
                known = sorted(_HMAC_ALGORITHMS | _ASYMMETRIC_ALGORITHMS)
                raise ValueError(f"unknown JWT algorithm {alg!r}; expected one of {known}")
        if any(a in _HMAC_ALGORITHMS for a in algorithms) and any(
            a in _ASYMMETRIC_ALGORITHMS for a in algorithms
        ):
            raise ValueError(
                "JWTConfig.algorithms must not mix HMAC (HS*) and asymmetric algorithms: "
                "one key cannot be both a shared secret and a public key (algorithm confusion)"
            )

    def _check_key(self) -> None:
        key = self.key
        if not isinstance(key, (str, bytes)):
            raise ValueError(f"JWTConfig.key must be str or bytes, got {type(key).__name__}")
        raw = key.encode("utf-8") if isinstance(key, str) else key
        if not raw.strip():
            raise ValueError("JWTConfig.key must not be empty")
        if b"PRIVATE KEY-----" in raw:
            raise ValueError(
                "JWTConfig.key is a private key: configure the public key (verification never "
                "needs the private key, and it must not sit in the audit configuration)"
            )
        if self.algorithms[0] in _HMAC_ALGORITHMS:
            head = raw.lstrip()
            if any(head.startswith(m) for m in _ASYMMETRIC_KEY_MARKERS) or b"-----BEGIN" in raw:
                raise ValueError(
                    "JWTConfig.key looks like a PEM/SSH public key or certificate, which must not "
                    "be used as an HS* secret (algorithm confusion): configure the matching "
                    "RS*/PS*/ES*/EdDSA algorithm instead"
                )


def _import_jwt() -> ModuleType:
    try:
        import jwt
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return jwt


def _prepare_key(config: JWTConfig) -> Any:
    """The key parsed once, checked against every configured algorithm; ValueError if unusable.

    Call only after :func:`_import_jwt` succeeded.
    """
    from jwt.algorithms import get_default_algorithms

    available = get_default_algorithms()
    prepared: Any = None
    for alg in config.algorithms:
        algorithm = available.get(alg)
        if algorithm is None:
            raise ImportError(
                f"JWT algorithm {alg} is not available in the installed PyJWT (RS*/PS*/ES*/EdDSA "
                "need cryptography): pip install 'audit-log-middleware[jwt]'"
            )
        try:
            candidate = algorithm.prepare_key(config.key)
        except Exception as exc:
            raise ValueError(f"JWTConfig.key is not usable with {alg}: {exc}") from exc
        check_length = getattr(algorithm, "check_key_length", None)
        weakness = check_length(candidate) if check_length is not None else None
        if weakness:
            raise ValueError(f"JWTConfig.key is too weak for {alg}: {weakness}")
        if prepared is None:
            prepared = candidate
    return prepared


def _number(value: object) -> float | None:
    """A JSON NumericDate as a finite float, else None (bools, strings, NaN, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _claim_text(value: object, limit: int) -> str | None:
    """A str or int claim as non-blank text of at most ``limit`` characters, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            value = str(value)
        except ValueError:  # more digits than int->str conversion allows
            return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        return None
    return value


class JWTVerifier:
    """Verifies bearer tokens against a :class:`JWTConfig` and maps their claims to an actor.

    Verified claims are cached per token (a bounded, thread-safe LRU of ``cache_size`` entries,
    0 disables it), so a token seen on many requests is verified once; the time checks
    (``exp``, ``nbf``, ``iat``) are re-run on every call, cached or not. Only successful
    verifications are cached. Building a verifier imports PyJWT and parses the key, so a key
    that does not fit the algorithms fails here, loudly, rather than on every request.
    """

    __slots__ = ("_cache", "_cache_size", "_jwt", "_key", "_lock", "_options", "config")

    def __init__(self, config: JWTConfig, *, cache_size: int = 1024) -> None:
        if not isinstance(config, JWTConfig):
            raise TypeError(f"config must be a JWTConfig, got {type(config).__name__}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {cache_size!r}")
        self._jwt = _import_jwt()
        self.config = config
        self._key = _prepare_key(config)
        require = ["exp", config.id_claim]
        if config.audience is not None:
            require.append("aud")
        if config.issuer is not None:
            require.append("iss")
        # Time checks run in _in_time against the caller's ``now``. verify_sub is off so that
        # an integer ``sub`` (common, if non-standard) still names the actor: actor() does its
        # own type checking, and the claim is covered by the signature either way.
        self._options: Options = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": True,
            "verify_iss": True,
            "verify_sub": False,
            "require": require,
            "enforce_minimum_key_length": True,
        }
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, Mapping[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JWTVerifier(algorithms={self.config.algorithms!r}, key=<redacted>)"

    def claims(self, token: str, *, now: float | None = None) -> Mapping[str, Any] | None:
        """The verified claims of ``token`` as of ``now`` (UNIX time, default: the clock).

        None, never an exception, for anything that is not a token signed with the configured
        key and one of the configured algorithms, for the wrong audience or issuer, and for a
        token without ``exp``, expired at ``now``, not yet valid (``nbf``) or issued after
        ``now`` (``iat``), all within ``leeway_seconds``. The mapping is read-only and shared
        between calls for the same token: do not mutate nested values.
        """
        try:
            return self._claims(token, now)
        except Exception:
            return None

    def _claims(self, token: object, now: object) -> Mapping[str, Any] | None:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        if _COMPACT_JWS.fullmatch(token) is None:  # also rules out non-ASCII and alg=none
            return None
        at = time.time() if now is None else _number(now)
        if at is None:
            return None
        cache_key = hashlib.sha256(token.encode("ascii")).digest()
        claims = self._cached(cache_key)
        if claims is None:
            claims = self._verify(token)
            if claims is None:
                return None
            self._remember(cache_key, claims)
        return claims if self._in_time(claims, at) else None

    def _verify(self, token: str) -> Mapping[str, Any] | None:
        """Signature, audience, issuer and required claims; None on any failure."""
        config = self.config
        try:
            payload = self._jwt.decode(
                token,
                self._key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options=self._options,
            )
        except Exception:
            return None
        if not isinstance(payload, dict):
            return None
        return MappingProxyType(payload)

    def _in_time(self, claims: Mapping[str, Any], now: float) -> bool:
        leeway = self.config.leeway_seconds
        exp = _number(claims.get("exp"))
        if exp is None or exp <= now - leeway:
            return False
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None or nbf > now + leeway:
                return False
        if "iat" in claims:
            iat = _number(claims["iat"])
            if iat is None or iat > now + leeway:
                return False
        return True

    def _cached(self, key: bytes) -> Mapping[str, Any] | None:
        if not self._cache_size:
            return None
        with self._lock:
            claims = self._cache.get(key)
            if claims is not None:
                self._cache.move_to_end(key)
            return claims

    def _remember(self, key: bytes, claims: Mapping[str, Any]) -> None:
        if not self._cache_size:
            return
        with self._lock:
            self._cache[key] = claims
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def actor(self, claims: Mapping[str, Any]) -> Actor | None:
        """The actor named by verified ``claims``; None without a usable id claim.

        The id claim must be a non-blank str or an int, at most 256 characters. The type comes
        from ``type_claim`` when it is ``user``, ``api_key`` or ``service`` (else ``user``);
        the email claim is kept when it is a str of at most 320 characters.
        """
        config = self.config
        try:
            actor_id = _claim_text(claims.get(config.id_claim), MAX_ID_CHARS)
            if actor_id is None:
                return None
            actor_type: ActorType = "user"
            if config.type_claim is not None:
                raw_type = claims.get(config.type_claim)
                if isinstance(raw_type, str):
                    actor_type = _ACTOR_TYPES.get(raw_type, "user")
            email = claims.get(config.email_claim)
            if not isinstance(email, str) or not email or len(email) > MAX_EMAIL_CHARS:
                email = None
            return Actor(id=actor_id, type=actor_type, email=email)
        except Exception:
            return None

    def org(self, claims: Mapping[str, Any]) -> str | None:
        """The org claim (str or int) as text of at most 256 characters, else None."""
        org_claim = self.config.org_claim
        if org_claim is None:
            return None
        try:
            return _claim_text(claims.get(org_claim), MAX_ID_CHARS)
        except Exception:
            return None


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of a ``Bearer`` (any case) ``authorization`` header, else None. Never raises.

    ``headers`` is ASGI-style: (lowercase name, value) byte pairs. Only the *first*
    ``authorization`` header counts, as in the frameworks that authenticate the request: if it
    is ``Basic ...``, a ``Bearer`` header after it is not what the app authenticated, and
    attributing the request to that token could name the wrong actor. The token is not verified
    here; pass it to :meth:`JWTVerifier.claims`.
    """
    try:
        for item in headers:
            try:
                name, value = item
            except (TypeError, ValueError):
                continue
            if not isinstance(name, bytes) or name.lower() != b"authorization":
                continue
            if not isinstance(value, bytes):
                return None
            parts = _AUTH_SEPARATOR.split(value.decode("latin-1").strip(" \t"), maxsplit=1)
            if len(parts) != 2 or parts[0].lower() != "bearer":
                return None
            return parts[1].strip(" \t") or None
    except Exception:
        return None
    return None
