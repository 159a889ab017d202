"""Redaction and neutralisation of untrusted request data before it enters an audit event.

Defends against: credentials reaching the audit trail through well-known header names
(``Authorization``, ``Cookie``, ...), secret-looking key names in query strings, path
parameters and metadata (``password``, ``access_token``, ``X-Api-Key``, ...), and
credential-shaped values under any key (Bearer/Basic credentials, JWTs, AWS key ids, PEM
private keys, Stripe/GitHub/Slack/Google keys); log forging and terminal injection through
CR/LF, ANSI escapes, NUL, C1 controls, bidi overrides and Unicode line separators; invalid
UTF-8; and oversized or deeply nested values that would blow up event size.

Does not defend against: a secret under an innocent key name whose value does not look like
a credential (``{"note": "hunter2"}``); credentials in formats the detectors do not know
(e.g. base64-wrapped); secrets or personal data that the application itself puts into
action names, resource ids or other fields it records verbatim. Redaction is a safety net,
not a substitute for recording only what you need. Escaping is not reversible: a literal
backslash in the input is left as is.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl

import orjson

__all__ = [
    "DEFAULT_HEADER_ALLOWLIST",
    "DEFAULT_SECRET_KEY_PARTS",
    "NEVER_RECORDED_HEADERS",
    "REDACTED",
    "JSONValue",
    "Redactor",
    "clean_text",
    "looks_like_secret_value",
]

REDACTED: Final = "[REDACTED]"

#: Lowercase key-name parts that mark a key as secret. Matching rule (see
#: :meth:`Redactor.is_secret_key`): parts of at most 4 letters/digits (``auth``, ``otp``,
#: ``ssn``, ``card``, ``pwd``, ...) must equal a whole word of the key, so ``auth_header``
#: matches but ``author``, ``footprint`` and ``discard`` do not; longer parts match anywhere.
DEFAULT_SECRET_KEY_PARTS: Final[frozenset[str]] = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "passcode",
        "secret",
        "token",
        "auth",
        "authorization",
        "authentication",
        "cookie",
        "session",
        "sessid",  # PHPSESSID
        "sid",  # connect.sid
        "api_key",
        "apikey",
        "api-key",
        "access_key",
        "private_key",
        "credential",
        "signature",
        "jwt",
        "otp",
        "totp",
        "csrf",
        "xsrf",
        "bearer",
        "ssn",
        "card",
        "cardnumber",
        "creditcard",
        "cvv",
        "cvc",
    }
)

#: Header names that can never be recorded, even if allow-listed. Any header name that
#: :meth:`Redactor.is_secret_key` flags is refused as well.
NEVER_RECORDED_HEADERS: Final[frozenset[str]] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-amz-security-token",
    }
)

DEFAULT_HEADER_ALLOWLIST: Final[tuple[str, ...]] = (
    "host",
    "origin",
    "content-type",
    "content-length",
    "accept-language",
)

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

_ELLIPSIS: Final = "…"
_TRUNCATED_KEY: Final = "_truncated"
_DEPTH_MARKER: Final = "[TRUNCATED: depth]"
_CYCLE_MARKER: Final = "[TRUNCATED: cycle]"
_MAX_HEADER_LINES: Final = 200
_MAX_QUERY_BYTES: Final = 4096
_MAX_QUERY_VALUES: Final = 20
_MAX_KEY_CHARS: Final = 100
_MAX_DEPTH_LIMIT: Final = 64
_MIN_METADATA_BYTES: Final = 32
# Secret detection looks this far past the recorded prefix so that a credential straddling
# the truncation point is still recognised (and never leaks as a partial prefix).
_SECRET_LOOKAHEAD: Final = 2048
_WHOLE_WORD_MAX: Final = 4
_KEY_CACHE_SIZE: Final = 4096
_KEY_CACHE_MAX_LEN: Final = 200
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1  # orjson range

# C0, DEL, C1, ALM, LRM/RLM, LS/PS, bidi embeddings/overrides (U+202A-E), isolates
# (U+2066-9) and lone surrogates (which are not encodable as UTF-8).
_CONTROL_RE: Final = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT_ESCAPES: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}

_AUTH_SCHEME_RE: Final = re.compile(r"\s*(bearer|basic)\s+([A-Za-z0-9._~+/-]+=*)\s*", re.I)
# Every alternative needs a literal that _may_hold_token looks for: keep the two in step.
_TOKEN_RE: Final = re.compile(
    r"""
    \beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*  # JWT (empty sig: alg=none)
    | \b(?:AKIA|ASIA)[A-Z0-9]{16}\b                            # AWS access key id
    | -----BEGIN[ A-Z0-9]*PRIVATE\ KEY-----                    # PEM private key block
    | \b[rs]k_(?:live|test)_[A-Za-z0-9]{8,}                    # Stripe-style secret keys
    | \bgh[opsru]_[A-Za-z0-9]{20,}                             # GitHub tokens
    | \bgithub_pat_[A-Za-z0-9_]{20,}
    | \bxox[abposr]-[A-Za-z0-9-]{10,}                          # Slack tokens
    | \bAIza[A-Za-z0-9_-]{35}                                  # Google API keys
    """,
    re.VERBOSE,
)
_TOKEN_MIN_LENGTH: Final = 15  # the shortest text _TOKEN_RE can match (a Slack token)

_CAMEL_RE: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD_RE: Final = re.compile(r"[^\W\d_]+|\d+")


class _Overflow(Exception):
    """Raised inside the metadata walk once the size budget is certainly exceeded."""


def _escape_char(ch: str) -> str:
    short = _SHORT_ESCAPES.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape'd byte: show it like backslashreplace
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escape_match(match: re.Match[str]) -> str:
    return _escape_char(match.group())


def _type_name(value: object) -> str:
    return clean_text(type(value).__name__, _MAX_KEY_CHARS)


def _safe_str(value: object) -> str:
    """``str(value)``, or the type name if that raises."""
    try:
        return str(value)
    except Exception:
        return type(value).__name__


def _to_text(value: object, limit: int) -> str:
    """Decode/convert *value* to an exact ``str`` of at most *limit* characters."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            # A code point needs at most 4 bytes, so this prefix yields >= limit characters.
            raw = bytes(value[: 4 * limit])
        except Exception:
            return type(value).__name__[:limit]
        return raw.decode("utf-8", "surrogateescape")[:limit]
    if not isinstance(value, str):
        value = _safe_str(value)
    # Slicing gives an exact str even for str subclasses (no overridden methods survive).
    return value[:limit] if type(value) is str else str.__str__(value)[:limit]


def clean_text(value: object, max_length: int) -> str:
    """Return *value* as printable single-line text of at most *max_length* characters.

    Bytes are decoded as UTF-8 with invalid bytes shown as ``\\xNN``. Control characters,
    line/paragraph separators, bidi controls and lone surrogates become visible escapes
    (``\\n``, ``\\x1b``, ``\\u202e``). Truncated output ends with ``…``; an escape is never
    cut in half. Never raises for any *value*; ``max_length < 1`` raises ``ValueError``.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length!r}")
    text = _to_text(value, max_length + 1)
    if len(text) <= max_length and (text.isprintable() or _CONTROL_RE.search(text) is None):
        return text
    escaped = _CONTROL_RE.sub(_escape_match, text)
    if len(text) <= max_length and len(escaped) <= max_length:
        return escaped
    budget = max_length - 1  # room for the ellipsis
    pieces: list[str] = []
    used = 0
    pos = 0
    for match in _CONTROL_RE.finditer(text):
        plain = text[pos : match.start()]
        if used + len(plain) >= budget:
            pieces.append(plain[: budget - used])
            break
        pieces.append(plain)
        used += len(plain)
        escape = _escape_char(match.group())
        if used + len(escape) > budget:
            break
        pieces.append(escape)
        used += len(escape)
        pos = match.end()
    else:
        pieces.append(text[pos : pos + budget - used])
    pieces.append(_ELLIPSIS)
    return "".join(pieces)


def _is_basic_credential(token: str) -> bool:
    padded = token + "=" * (-len(token) % 4)
    try:
        decoded = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded  # RFC 7617: base64("user-id:password")


def looks_like_secret_value(value: object) -> bool:
    """Return True if *value* looks like a credential, whatever key it is stored under.

    Recognises ``Bearer <token>`` and ``Basic <base64 user:pass>`` (whole value, any case),
    and anywhere in the value: JWTs, AWS access key ids, PEM private key blocks,
    ``sk_live_``/``sk_test_`` keys, GitHub, Slack and Google API tokens.
    """
    if not isinstance(value, str):
        return False
    # The scheme needs whitespace after it; in a printable string the ASCII space is the only
    # whitespace (str.isprintable excludes every other character \s matches).
    if " " in value or not value.isprintable():
        scheme = _AUTH_SCHEME_RE.fullmatch(value)
        if scheme is not None and (
            scheme.group(1).lower() == "bearer" or _is_basic_credential(scheme.group(2))
        ):
            return True
    return (
        len(value) >= _TOKEN_MIN_LENGTH
        and _may_hold_token(value)
        and _TOKEN_RE.search(value) is not None
    )


def _may_hold_token(text: str) -> bool:
    """False when ``text`` holds none of the literals every ``_TOKEN_RE`` alternative needs.

    The token pattern tries each of its alternatives at every position (about 13 µs for 130
    characters of ordinary text); these substring searches rule most text out in well under
    one."""
    return (
        "eyJ" in text
        or "AKIA" in text
        or "ASIA" in text
        or "-----BEGIN" in text
        or "k_live_" in text
        or "k_test_" in text
        or "xox" in text
        or "AIza" in text
        or (
            "_" in text
            and (
                "gho_" in text
                or "ghp_" in text
                or "ghs_" in text
                or "ghr_" in text
                or "ghu_" in text
                or "github_pat_" in text
            )
        )
    )


def _take(items: Iterable[Any], limit: int) -> list[Any]:
    """Up to ``limit`` items; an iterable that breaks midway yields what came before."""
    taken: list[Any] = []
    with contextlib.suppress(Exception):
        for item in islice(items, limit):
            taken.append(item)
    return taken


def _redact(text: str) -> str:
    return REDACTED if looks_like_secret_value(text) else text


@functools.lru_cache(maxsize=2048)
def _clean_header_value(value: bytes, limit: int) -> str:
    """Short header values repeat across requests (host, content type): clean each once."""
    return _redact(clean_text(value, limit))


def _key_words(key: str) -> list[str]:
    """Split a key into lowercase words: camelCase, separators, letter/digit boundaries."""
    return _WORD_RE.findall(_CAMEL_RE.sub("_", key).lower())


def _check_limit(name: str, value: int, minimum: int = 1, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")


class Redactor:
    """Turns untrusted headers, query strings and metadata into bounded, secret-free data."""

    def __init__(
        self,
        *,
        extra_secret_keys: Iterable[str] = (),
        header_allowlist: Iterable[str] = DEFAULT_HEADER_ALLOWLIST,
        max_string: int = 500,
        max_keys: int = 50,
        max_depth: int = 4,
        max_metadata_bytes: int = 4096,
    ) -> None:
        """Validate limits and compile the key matcher.

        ``max_depth`` is capped at 64 and ``max_metadata_bytes`` must be at least 32 so the
        ``_truncated`` marker always fits. Raises ``ValueError`` for an allow-listed header
        that can never be recorded.
        """
        _check_limit("max_string", max_string)
        _check_limit("max_keys", max_keys)
        _check_limit("max_depth", max_depth, maximum=_MAX_DEPTH_LIMIT)
        _check_limit("max_metadata_bytes", max_metadata_bytes, minimum=_MIN_METADATA_BYTES)
        self._max_string = max_string
        self._max_keys = max_keys
        self._max_depth = max_depth
        self._max_metadata_bytes = max_metadata_bytes

        if isinstance(extra_secret_keys, str | bytes):
            raise TypeError("extra_secret_keys must be an iterable of strings, not a string")
        parts = set(DEFAULT_SECRET_KEY_PARTS)
        for part in extra_secret_keys:
            if not isinstance(part, str) or not _key_words(part):
                raise ValueError(f"secret key part must be a non-empty word, got {part!r}")
            parts.add(part.lower())
        substrings: set[str] = set()
        single_words: set[str] = set()
        multi_words: set[tuple[str, ...]] = set()
        for part in parts:
            words = _key_words(part)
            compact = "".join(words)
            if len(compact) > _WHOLE_WORD_MAX:
                substrings.add(compact)
            elif len(words) == 1:
                single_words.add(compact)
            else:
                multi_words.add(tuple(words))
        self._substring_re = re.compile("|".join(map(re.escape, sorted(substrings))))
        self._single_words = frozenset(single_words)
        self._multi_words = tuple(sorted(multi_words))
        self._key_cache: dict[str, bool] = {}

        if isinstance(header_allowlist, str | bytes):
            raise TypeError("header_allowlist must be an iterable of strings, not a string")
        allowed: set[str] = set()
        for header in header_allowlist:
            name = header.strip().lower()
            if self._never_recorded(name):
                raise ValueError(
                    f"header {name!r} can never be recorded (it carries credentials); "
                    "remove it from header_allowlist"
                )
            allowed.add(name)
        self._header_allowlist = frozenset(allowed)
        self._header_allow_bytes = frozenset(h.encode("latin-1", "replace") for h in allowed)

    # -- keys -----------------------------------------------------------------------------

    @property
    def allowed_header_names(self) -> frozenset[bytes]:
        """The allow-listed header names, lowercase, as bytes (as ASGI delivers them)."""
        return self._header_allow_bytes

    def is_secret_key(self, key: object) -> bool:
        """Return True if *key* names a secret.

        The key is split into lowercase words (on ``-``, ``.``, ``_``, spaces, any other
        non-alphanumeric, camelCase and letter/digit boundaries). A part of at most 4
        characters must equal a whole word (``auth`` matches ``x_auth``/``authHeader``,
        not ``author``); a longer part matches anywhere in the words joined together
        (``token`` matches ``accessToken``; ``api_key`` matches ``X-Api-Key``/``apikey``).
        """
        if not isinstance(key, str):
            key = _safe_str(key)
        cached = self._key_cache.get(key)
        if cached is not None:
            return cached
        words = _key_words(key)
        result = bool(words) and (
            self._substring_re.search("".join(words)) is not None
            or not self._single_words.isdisjoint(words)
            or any(_contains_run(words, run) for run in self._multi_words)
        )
        if len(key) <= _KEY_CACHE_MAX_LEN:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[key] = result
        return result

    def _never_recorded(self, header: str) -> bool:
        return header in NEVER_RECORDED_HEADERS or self.is_secret_key(header)

    # -- values ---------------------------------------------------------------------------

    def _clean_value(self, value: object) -> str:
        """Clean a value to ``max_string`` chars, or REDACTED if it looks like a secret."""
        probe = _to_text(value, self._max_string + _SECRET_LOOKAHEAD)
        if looks_like_secret_value(probe):
            return REDACTED
        return clean_text(probe, self._max_string)

    def scalar(self, key: object, value: object) -> str:
        """Clean one path parameter or target id; REDACTED for a secret key or value."""
        if self.is_secret_key(key):
            return REDACTED
        return self._clean_value(value)

    def headers(self, raw: Iterable[Any]) -> dict[str, str]:
        """Return allow-listed headers (first 200 lines) as cleaned, joined values."""
        items = raw if isinstance(raw, list | tuple) else _take(raw, _MAX_HEADER_LINES)
        try:
            return self._headers_fast(items)
        except Exception:  # anything unusual: the careful path below
            return self._headers_careful(items)

    def _headers_fast(self, raw: Iterable[Any]) -> dict[str, str]:
        """Well-formed ASGI headers (lowercase bytes names, short values); raises otherwise."""
        allowed = self._header_allow_bytes
        limit = self._max_string
        out: dict[str, str] = {}
        for name, value in islice(raw, _MAX_HEADER_LINES):
            if name in allowed:
                if len(value) > limit or type(value) is not bytes:
                    raise ValueError("long or unusual value")
                key = name.decode("latin-1")
                if key in out:
                    raise ValueError("repeated header")
                out[key] = (
                    _clean_header_value(value, limit)
                    if len(value) <= 256
                    else _redact(clean_text(value, limit))
                )
        return out

    def _headers_careful(self, raw: Iterable[Any]) -> dict[str, str]:
        allowed = self._header_allow_bytes
        collected: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        # A broken iterable simply ends the loop: keep what was collected.
        with contextlib.suppress(Exception):
            for item in islice(raw, _MAX_HEADER_LINES):
                try:
                    raw_name, raw_value = item
                except (TypeError, ValueError):
                    continue
                # Fast path: ASGI names are lowercase bytes; only allow-listed ones are decoded.
                if type(raw_name) is bytes:
                    key = raw_name if raw_name in allowed else raw_name.lower()
                elif isinstance(raw_name, bytes | bytearray | str):
                    key = _to_text(raw_name, _MAX_KEY_CHARS).lower().encode("latin-1", "replace")
                else:
                    continue
                if key not in allowed:
                    continue
                name = key.decode("latin-1")  # never-recorded names were refused in __init__
                if not isinstance(raw_value, bytes | bytearray | str):
                    continue
                if sizes.get(name, 0) > self._max_string:
                    continue  # already more than will be recorded
                text = _to_text(raw_value, self._max_string + _SECRET_LOOKAHEAD)
                value = REDACTED if looks_like_secret_value(text) else text
                collected.setdefault(name, []).append(value)
                sizes[name] = sizes.get(name, 0) + len(value) + 2
        return {
            name: clean_text(", ".join(values), self._max_string)
            for name, values in collected.items()
        }

    def query(self, raw_query: object) -> dict[str, str | list[str]]:
        """Parse a query string (first 4096 bytes) into cleaned, redacted values.

        Bytes are decoded so that both raw and percent-encoded UTF-8 come out right and
        invalid bytes show as ``\\xNN``. A key repeated gives a list (at most 20 values).
        At most ``max_keys`` distinct keys. If the input is cut, the partial last pair is
        dropped. Never raises.
        """
        try:
            pairs = _parse_query(raw_query)
        except Exception:
            return {}
        result: dict[str, str | list[str]] = {}
        for raw_key, raw_value in pairs:
            key = clean_text(raw_key, _MAX_KEY_CHARS)
            if key not in result and len(result) >= self._max_keys:
                continue
            value = REDACTED if self.is_secret_key(raw_key) else self._clean_value(raw_value)
            existing = result.get(key)
            if existing is None:
                result[key] = value
            elif isinstance(existing, list):
                if len(existing) < _MAX_QUERY_VALUES:
                    existing.append(value)
            else:
                result[key] = [existing, value]
        return result

    # -- metadata -------------------------------------------------------------------------

    def metadata(self, data: Mapping[str, object]) -> dict[str, JSONValue]:
        """Return a bounded, JSON-safe, redacted copy of *data*. Never raises.

        Secret keys and secret-looking strings become REDACTED; containers deeper than
        ``max_depth`` (top level = 1) become ``"[TRUNCATED: depth]"``, cycles
        ``"[TRUNCATED: cycle]"``. If more than ``max_keys`` top-level keys are given or the
        JSON would exceed ``max_metadata_bytes``, trailing top-level keys are dropped and
        ``"_truncated": True`` is added. A non-mapping gives ``{}``.
        """
        try:
            fast = self._metadata_flat(data)
            if fast is not None:
                return fast
            out, truncated = self._metadata_top(data)
            return self._fit(out, truncated)
        except Exception:  # last-resort guard: auditing must never break the request
            return {_TRUNCATED_KEY: True}

    def metadata_pairs(
        self, keys: tuple[Any, ...], values: tuple[Any, ...]
    ) -> dict[str, JSONValue]:
        """:meth:`metadata` of ``dict(zip(keys, values))`` (equal-length tuples, as ``record()``
        queues a mapping), without making that dict in the common case."""
        fast = None
        if len(keys) == len(values):
            pairs = zip(keys, values)  # noqa: B905 - equal lengths, checked (strict=True is slower)
            try:
                fast = self._metadata_flat_pairs(pairs, len(keys))
            except Exception:  # last-resort guard, as in metadata()
                return {_TRUNCATED_KEY: True}
        return fast if fast is not None else self.metadata(dict(zip(keys, values, strict=True)))

    def _metadata_flat(self, data: object) -> dict[str, JSONValue] | None:
        """The common case in a fraction of the time: a small flat dict of printable str keys
        and plain scalars, well inside every limit. Anything else returns None (full path).
        The result equals what the full path gives for the same input."""
        if type(data) is not dict:
            return None
        return self._metadata_flat_pairs(iter(data.items()), len(data))

    def _metadata_flat_pairs(
        self, pairs: Iterator[tuple[Any, Any]], count: int
    ) -> dict[str, JSONValue] | None:
        """:meth:`_metadata_flat` of ``count`` key-value pairs (a repeated key counts twice and
        keeps its last value, as in a dict built from them)."""
        if count > self._max_keys:
            return None
        out: dict[str, JSONValue] = {}
        size = 2
        limit = self._max_string
        for key, value in pairs:
            if type(key) is not str or not 0 < len(key) <= 100 or not key.isprintable():
                return None
            kind = type(value)
            if kind is str:
                if len(value) > limit or not value.isprintable():
                    return None
                secret = self.is_secret_key(key) or looks_like_secret_value(value)
                size += len(value) * 4  # worst case: every character escaped by the encoder
            elif value is None or kind is bool or (kind is int and -(2**63) <= value < 2**64):
                secret = self.is_secret_key(key)
                size += 21
            else:
                return None  # floats, containers, objects: the full path converts them
            out[key] = REDACTED if secret else value
            size += len(key) * 4 + 6
        return out if size <= self._max_metadata_bytes else None

    def _metadata_top(self, data: object) -> tuple[dict[str, JSONValue], bool]:
        out: dict[str, JSONValue] = {}
        if not isinstance(data, Mapping):
            return out, False
        walk = _Walk(self._max_metadata_bytes, id(data))
        try:
            for index, (raw_key, value) in enumerate(data.items()):
                if index >= self._max_keys:
                    return out, True
                key, converted = self._entry(raw_key, value, 2, walk)
                out[key] = converted
        except _Overflow:
            return out, True
        except Exception:  # a broken Mapping: keep what was converted
            return out, True
        return out, False

    def _entry(
        self, raw_key: object, value: object, depth: int, walk: _Walk
    ) -> tuple[str, JSONValue]:
        key_text = raw_key if isinstance(raw_key, str) else _safe_str(raw_key)
        key = clean_text(key_text, _MAX_KEY_CHARS)
        walk.charge(len(key) + 3)
        if self.is_secret_key(key_text):
            walk.charge(len(REDACTED) + 2)
            return key, REDACTED
        return key, self._convert(value, depth, walk)

    def _convert(self, value: object, depth: int, walk: _Walk) -> JSONValue:
        try:
            return self._convert_unguarded(value, depth, walk)
        except _Overflow:
            raise
        except Exception:  # hostile __eq__/__int__/__iter__ etc.
            return _type_name(value)

    def _convert_unguarded(self, value: object, depth: int, walk: _Walk) -> JSONValue:
        if value is None or isinstance(value, bool):
            walk.charge(4)
            return value
        if isinstance(value, int):
            number = int(value)
            if _INT_MIN <= number <= _INT_MAX:
                walk.charge(1)
                return number
            return self._string(number, walk)
        if isinstance(value, float):
            real = float(value)
            if math.isfinite(real):
                walk.charge(1)
                return real
            return self._string(real, walk)
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            if depth > self._max_depth:
                return self._string(_DEPTH_MARKER, walk)
            if id(value) in walk.active:
                return self._string(_CYCLE_MARKER, walk)
            walk.active.add(id(value))
            walk.charge(2)  # brackets: also bounds work on nests of empty containers
            try:
                if isinstance(value, Mapping):
                    nested: dict[str, JSONValue] = {}
                    for raw_key, item in islice(value.items(), self._max_keys):
                        key, converted = self._entry(raw_key, item, depth + 1, walk)
                        nested[key] = converted
                    return nested
                return [
                    self._convert(item, depth + 1, walk) for item in islice(value, self._max_keys)
                ]
            finally:
                walk.active.discard(id(value))
        return self._string(value, walk)

    def _string(self, value: object, walk: _Walk) -> str:
        text = self._clean_value(value)
        walk.charge(len(text) + 2)
        return text

    def _fit(self, out: dict[str, JSONValue], truncated: bool) -> dict[str, JSONValue]:
        budget = self._max_metadata_bytes
        if not truncated and len(orjson.dumps(out)) <= budget:
            return out
        out.pop(_TRUNCATED_KEY, None)
        # '{' + entries each followed by ',' + '"_truncated":true' + '}'
        room = budget - 2 - len(b'"_truncated":true')
        fitted: dict[str, JSONValue] = {}
        for key, value in out.items():
            entry = len(orjson.dumps({key: value})) - 2 + 1
            if entry > room:
                break
            fitted[key] = value
            room -= entry
        fitted[_TRUNCATED_KEY] = True
        return fitted


class _Walk:
    """State of one metadata walk: containers on the current path and a size lower bound."""

    __slots__ = ("active", "remaining")

    def __init__(self, budget: int, root: int) -> None:
        self.remaining = budget
        self.active = {root}

    def charge(self, size: int) -> None:
        # Charges never exceed the serialized size, so overflow here means the current
        # top-level entry cannot fit and will be dropped anyway: stop the work early.
        self.remaining -= size
        if self.remaining < 0:
            raise _Overflow


def _contains_run(words: list[str], run: tuple[str, ...]) -> bool:
    size = len(run)
    return any(tuple(words[i : i + size]) == run for i in range(len(words) - size + 1))


def _latin1_to_text(value: str) -> str:
    # Undo the 1:1 latin-1 decoding: UTF-8 comes out right, invalid bytes become
    # surrogateescapes that clean_text shows as \xNN.
    return value.encode("latin-1").decode("utf-8", "surrogateescape")


def _parse_query(raw_query: object) -> list[tuple[str, str]]:
    if isinstance(raw_query, bytes | bytearray | memoryview):
        chunk = bytes(raw_query[: _MAX_QUERY_BYTES + 1])
        if len(chunk) > _MAX_QUERY_BYTES:
            chunk = chunk[:_MAX_QUERY_BYTES]
            if b"&" in chunk:
                chunk = chunk.rpartition(b"&")[0]
        text = chunk.decode("latin-1").removeprefix("?")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="latin-1", errors="replace")
        return [(_latin1_to_text(key), _latin1_to_text(value)) for key, value in pairs]
    if isinstance(raw_query, str):
        text = _to_text(raw_query, _MAX_QUERY_BYTES + 1)
        if len(text) > _MAX_QUERY_BYTES:
            text = text[:_MAX_QUERY_BYTES]
            if "&" in text:
                text = text.rpartition("&")[0]
        text = text.removeprefix("?")
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace")
    return []
