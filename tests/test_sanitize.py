"""Tests for audit_middleware._sanitize: escaping, truncation and secret redaction."""

from __future__ import annotations

import math
import re
import string
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_middleware._sanitize import (
    _TOKEN_MIN_LENGTH,
    _TOKEN_RE,
    DEFAULT_HEADER_ALLOWLIST,
    DEFAULT_SECRET_KEY_PARTS,
    NEVER_RECORDED_HEADERS,
    REDACTED,
    JSONValue,
    Redactor,
    _may_hold_token,
    clean_text,
    looks_like_secret_value,
)

# Independent statement of the characters that must never survive clean_text.
CONTROL_CODEPOINTS = frozenset(
    {*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)}
    | {*range(0x2066, 0x206A), 0x061C, 0x200E, 0x200F, *range(0xD800, 0xE000)}
)
NASTY_CHARS = [chr(c) for c in sorted(CONTROL_CODEPOINTS) if c < 0xD800] + ["\ud800", "\udcff"]

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2


# -- clean_text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("a\r\nb", "a\\r\\nb", id="crlf"),
        pytest.param("user=x\nINFO forged", "user=x\\nINFO forged", id="forged-line"),
        pytest.param("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m", id="ansi"),
        pytest.param("a\x00b", "a\\x00b", id="nul"),
        pytest.param("a\tb", "a\\tb", id="tab"),
        pytest.param("a\x7fb", "a\\x7fb", id="del"),
        pytest.param("a\x85b\x9b", "a\\x85b\\x9b", id="c1-nel-csi"),
        pytest.param("abc\u202edef", "abc\\u202edef", id="bidi-override"),
        pytest.param("\u2066x\u2069", "\\u2066x\\u2069", id="bidi-isolate"),
        pytest.param("a\u2028b\u2029c", "a\\u2028b\\u2029c", id="line-para-separator"),
        pytest.param("\u200ex\u200f\u061c", "\\u200ex\\u200f\\u061c", id="bidi-marks"),
        pytest.param("a\ud800b", "a\\ud800b", id="lone-surrogate"),
        pytest.param("a\udcffb", "a\\xffb", id="surrogate-escaped-byte"),
        pytest.param(b"ok\xffz", "ok\\xffz", id="bytes-invalid-utf8"),
        pytest.param(b"caf\xc3\xa9", "café", id="bytes-utf8"),
        pytest.param(b"a\r\nb", "a\\r\\nb", id="bytes-crlf"),
        pytest.param(b"\xc3", "\\xc3", id="bytes-truncated-sequence"),
        pytest.param("café 日本 🙂", "café 日本 🙂", id="printable-unicode"),
        pytest.param("back\\slash", "back\\slash", id="backslash-kept"),
        pytest.param("", "", id="empty"),
    ],
)
def test_clean_text_escapes(raw: str | bytes, expected: str) -> None:
    assert clean_text(raw, 100) == expected


def test_clean_text_plain_ascii_is_returned_as_is() -> None:
    text = "GET /api/v1/users?page=2"
    assert clean_text(text, 100) is text


def test_clean_text_returns_exact_str_for_subclass() -> None:
    class Sneaky(str):
        def __str__(self) -> str:
            raise RuntimeError("boom")

    result = clean_text(Sneaky("x\ny"), 100)
    assert type(result) is str
    assert result == "x\\ny"


@pytest.mark.parametrize(
    ("raw", "max_length", "expected"),
    [
        pytest.param("abcdef", 6, "abcdef", id="exact-fit"),
        pytest.param("abcdefg", 6, "abcde…", id="one-over"),
        pytest.param("x", 1, "x", id="len-1-fits"),
        pytest.param("xy", 1, "…", id="len-1-truncated"),
        pytest.param("\n", 1, "…", id="escape-does-not-fit"),
        pytest.param("\n", 2, "\\n", id="escape-exact-fit"),
        pytest.param("ab\ncd", 4, "ab…", id="no-half-short-escape"),
        pytest.param("a\x1bb", 5, "a…", id="no-half-hex-escape"),
        pytest.param("a\u202eb", 7, "a…", id="no-half-unicode-escape"),
        pytest.param("a\u202eb", 8, "a\\u202eb", id="unicode-escape-fits"),
        pytest.param("ab\x1b", 6, "ab\\x1b", id="escape-at-end-fits"),
        pytest.param(b"\xff\xff", 5, "\\xff…", id="bytes-escape-not-split"),
        pytest.param("a" * 10**6, 500, "a" * 499 + "…", id="huge"),
        pytest.param(b"a" * 10**6, 500, "a" * 499 + "…", id="huge-bytes"),
    ],
)
def test_clean_text_truncation(raw: str | bytes, max_length: int, expected: str) -> None:
    result = clean_text(raw, max_length)
    assert result == expected
    assert len(result) <= max_length


@pytest.mark.parametrize("max_length", [pytest.param(0, id="zero"), pytest.param(-5, id="neg")])
def test_clean_text_rejects_bad_max_length(max_length: int) -> None:
    with pytest.raises(ValueError, match="max_length"):
        clean_text("x", max_length)


_text_or_bytes = st.one_of(
    st.text(alphabet=st.one_of(st.characters(), st.sampled_from(NASTY_CHARS))),
    st.binary(),
)


@given(value=_text_or_bytes, max_length=st.integers(min_value=1, max_value=200))
def test_clean_text_property_no_controls_and_bounded(value: str | bytes, max_length: int) -> None:
    result = clean_text(value, max_length)
    assert len(result) <= max_length
    assert not any(ord(ch) in CONTROL_CODEPOINTS for ch in result)
    result.encode("utf-8")  # always valid UTF-8 (no lone surrogates)


_ESCAPE_LENGTH = {"x": 4, "u": 6}


@given(
    value=st.text(alphabet=st.sampled_from(["a", "é", *NASTY_CHARS])),
    max_length=st.integers(min_value=1, max_value=40),
)
def test_clean_text_property_never_cuts_an_escape(value: str, max_length: int) -> None:
    full = clean_text(value, 10**6)
    result = clean_text(value, max_length)
    if result == full:
        return
    assert result.endswith("…")
    kept = result[:-1]
    assert full.startswith(kept)
    # No backslash in the input alphabet, so every backslash starts an escape in `full`.
    start = kept.rfind("\\")
    if start >= 0:
        assert len(kept) - start >= _ESCAPE_LENGTH.get(full[start + 1], 2)


# -- looks_like_secret_value ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Bearer abc123.def-456", id="bearer"),
        pytest.param("bearer " + JWT, id="bearer-lowercase"),
        pytest.param("  BEARER xyz==  ", id="bearer-upper-padded"),
        pytest.param("Basic dXNlcjpwYXNzd29yZA==", id="basic"),
        pytest.param("basic YWxhZGRpbjpvcGVuc2VzYW1l", id="basic-lowercase-unpadded"),
        pytest.param("Bearer\u00a0abc123", id="bearer-no-break-space"),
        pytest.param("Bearer\tabc123", id="bearer-tab"),
        pytest.param("\u2028Basic dXNlcjpwYXNzd29yZA==", id="basic-line-separator"),
        pytest.param(JWT, id="jwt"),
        pytest.param(f"redirect?id_token={JWT}&x=1", id="jwt-embedded"),
        pytest.param("AKIAIOSFODNN7EXAMPLE", id="aws-akia"),
        pytest.param("key ASIAY34FZKBOKMUTVV7A used", id="aws-asia-embedded"),
        pytest.param("-----BEGIN PRIVATE KEY-----\nMIIEvQ...", id="pem"),
        pytest.param("-----BEGIN RSA PRIVATE KEY-----", id="pem-rsa"),
        pytest.param("-----BEGIN OPENSSH PRIVATE KEY-----", id="pem-openssh"),
        pytest.param("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", id="stripe-live"),
        pytest.param("sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc", id="stripe-test"),
        pytest.param(GITHUB_TOKEN, id="github-ghp"),
        pytest.param("gho_" + "x" * 36, id="github-gho"),
        pytest.param("ghs_" + "Z" * 36, id="github-ghs"),
        pytest.param("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", id="github-pat"),
        pytest.param("xoxb-123456789012-abcdefghij", id="slack"),
        pytest.param("rk_live_" + "4eC39HqLyjWDarjt", id="stripe-restricted"),
        pytest.param("key=AIza" + "SyA-" * 8 + "abc", id="google-api-key"),
    ],
)
def test_secret_values_detected(value: str) -> None:
    assert looks_like_secret_value(value)


_TOKEN_PARTS = ["eyJ", "AKIA", "ASIA", "-----BEGIN ", "PRIVATE KEY-----", "sk_live_", "rk_test_",
                "gh", "o_", "p_", "github_pat_", "xoxb-", "AIza", ".", " ", "_", "-"]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_TOKEN_PARTS),
            st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=40),
        ),
        max_size=12,
    ).map("".join)
)
def test_the_token_prefilter_never_hides_a_match(text: str) -> None:
    # The substring check that spares ordinary text the token pattern rejects no text the
    # pattern would match.
    if _TOKEN_RE.search(text) is not None:
        assert _may_hold_token(text)


def test_no_token_is_shorter_than_the_length_below_which_none_is_looked_for() -> None:
    shortest, _ = re._parser.parse(_TOKEN_RE.pattern, _TOKEN_RE.flags).getwidth()  # type: ignore[attr-defined]
    assert shortest == _TOKEN_MIN_LENGTH
    assert looks_like_secret_value("xoxb-0123456789")  # exactly that long


def test_the_scheme_prefilter_never_hides_a_match() -> None:
    # looks_like_secret_value tries the scheme pattern only on strings with a space or an
    # unprintable character: every other character \s matches must be unprintable.
    whitespace = re.compile(r"\s")
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if whitespace.fullmatch(char) and char != " ":
            assert not char.isprintable(), hex(code)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("alice@example.com", id="email"),
        pytest.param("123e4567-e89b-12d3-a456-426614174000", id="uuid"),
        pytest.param("The quick brown fox jumps over the lazy dog.", id="sentence"),
        pytest.param("Bearer of bad news", id="bearer-sentence"),
        pytest.param("Basic training", id="basic-not-credentials"),
        pytest.param("Basic plan", id="basic-plan"),
        pytest.param("Bearer", id="bearer-alone"),
        pytest.param("AKIA1234", id="aws-too-short"),
        pytest.param("-----BEGIN PUBLIC KEY-----", id="pem-public"),
        pytest.param("eyJ", id="jwt-prefix-only"),
        pytest.param("sk_live_", id="stripe-no-body"),
        pytest.param("https://example.com/path?page=2", id="url"),
        pytest.param("2024-01-01T00:00:00Z", id="timestamp"),
        pytest.param("", id="empty"),
        pytest.param("a" * 10_000, id="long-plain"),
    ],
)
def test_ordinary_values_not_flagged(value: str) -> None:
    assert not looks_like_secret_value(value)


# -- is_secret_key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(key, id=key)
        for key in [
            "password",
            "PASSWORD",
            "user_password_confirm",
            "passwd",
            "pwd",
            "client_secret",
            "AWS_SECRET_ACCESS_KEY",
            "X-Api-Key",
            "api.key",
            "apikey",
            "api key",
            "accessToken",
            "refresh_token",
            "id_token",
            "auth",
            "Auth",
            "auth_header",
            "x_auth",
            "authHeader",
            "X-Auth-Token",
            "Authorization",
            "proxy-authorization",
            "set-cookie",
            "session_id",
            "PHPSESSID",
            "connect.sid",
            "private_key",
            "credentials",
            "x-hub-signature",
            "jwt",
            "otp",
            "csrf",
            "_csrf",
            "X-CSRF-Token",
            "ssn",
            "card_number",
            "cardNumber",
            "cvv2",
            "pass\x00word",
        ]
    ],
)
def test_secret_keys(key: str) -> None:
    assert Redactor().is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(key, id=key or "empty")
        for key in [
            "author",
            "authority",
            "Author_Name",
            "keyboard",
            "monkey",
            "email",
            "role",
            "username",
            "user_id",
            "footprint",
            "classname",
            "discard",
            "consider",
            "content-type",
            "",
        ]
    ],
)
def test_non_secret_keys(key: str) -> None:
    assert not Redactor().is_secret_key(key)


def test_extra_secret_keys_are_lowercased_and_merged() -> None:
    redactor = Redactor(extra_secret_keys=["PIN", "Tenant-Secret-Hint"])
    assert redactor.is_secret_key("user_pin")
    assert redactor.is_secret_key("tenantSecretHint")
    assert not redactor.is_secret_key("spinner")  # short parts match whole words only
    assert redactor.is_secret_key("password")  # defaults kept


def test_default_constants() -> None:
    assert all(part == part.lower() for part in DEFAULT_SECRET_KEY_PARTS)
    assert all(name == name.lower() for name in NEVER_RECORDED_HEADERS)
    assert {"authorization", "cookie", "set-cookie", "x-api-key"} <= NEVER_RECORDED_HEADERS
    assert not NEVER_RECORDED_HEADERS & set(DEFAULT_HEADER_ALLOWLIST)


# -- constructor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("authorization", id="authorization"),
        pytest.param("Cookie", id="cookie-mixed-case"),
        pytest.param("set-cookie", id="set-cookie"),
        pytest.param("X-Api-Key", id="x-api-key"),
        pytest.param("x-csrf-token", id="csrf"),
        pytest.param("x-session-id", id="contains-secret-part"),
        pytest.param("x-my-token", id="contains-token"),
    ],
)
def test_never_recorded_header_in_allowlist_rejected(header: str) -> None:
    with pytest.raises(ValueError, match="can never be recorded") as excinfo:
        Redactor(header_allowlist=["host", header])
    assert header.lower() in str(excinfo.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"max_string": 0}, id="max_string"),
        pytest.param({"max_keys": 0}, id="max_keys"),
        pytest.param({"max_depth": 0}, id="max_depth"),
        pytest.param({"max_depth": 1000}, id="max_depth-too-large"),
        pytest.param({"max_metadata_bytes": 0}, id="max_metadata_bytes"),
        pytest.param({"max_metadata_bytes": 10}, id="max_metadata_bytes-too-small"),
        pytest.param({"extra_secret_keys": [""]}, id="empty-secret-part"),
        pytest.param({"extra_secret_keys": ["--"]}, id="punctuation-secret-part"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several distinct messages
        Redactor(**kwargs)  # type: ignore[arg-type]


def test_constructor_rejects_bare_strings() -> None:
    with pytest.raises(TypeError):
        Redactor(extra_secret_keys="pin")
    with pytest.raises(TypeError):
        Redactor(header_allowlist="host")


# -- headers --------------------------------------------------------------------------------


def test_headers_allowlist_and_never_recorded() -> None:
    raw = [
        (b"host", b"api.example.com"),
        (b"authorization", b"Bearer abc"),
        (b"cookie", b"session=abc"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"accept-language", b"en"),
        (b"accept-language", b"fr\r\nX-Injected: 1"),
        (b"content-type", b"application/json"),
    ]
    assert Redactor().headers(raw) == {
        "host": "api.example.com",
        "accept-language": "en, fr\\r\\nX-Injected: 1",
        "content-type": "application/json",
    }


def test_headers_allowlist_is_case_insensitive_and_redacts_secret_values() -> None:
    redactor = Redactor(header_allowlist=["X-Request-ID", "Host"])
    raw = [(b"x-request-id", b"Bearer abc.def"), (b"host", b"h\xff")]
    assert redactor.headers(raw) == {"x-request-id": REDACTED, "host": "h\\xff"}


def test_headers_stop_after_200_lines() -> None:
    raw = [(b"x-junk", b"j")] * 200 + [(b"host", b"late")]
    assert Redactor().headers(raw) == {}
    assert Redactor().headers(raw[1:]) == {"host": "late"}


def test_headers_bounded_values() -> None:
    redactor = Redactor(max_string=50)
    raw = [(b"host", b"h" * 100_000)] + [(b"accept-language", b"en" * 30)] * 150
    result = redactor.headers(iter(raw))
    assert set(result) == {"host", "accept-language"}
    assert all(len(value) <= 50 and value.endswith("…") for value in result.values())


def test_headers_tolerate_malformed_items() -> None:
    def broken() -> Iterator[tuple[bytes, bytes]]:
        yield (b"host", b"ok")
        raise RuntimeError("server bug")

    raw: list[object] = [(b"origin",), (None, b"x"), (b"content-type", 42), (b"host", "str-ok")]
    assert Redactor().headers(raw) == {"host": "str-ok"}
    assert Redactor().headers(broken()) == {"host": "ok"}


# -- query ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"page=2&sort=name", {"page": "2", "sort": "name"}, id="simple"),
        pytest.param("page=2&sort=name", {"page": "2", "sort": "name"}, id="str-input"),
        pytest.param(b"?page=2", {"page": "2"}, id="leading-question-mark"),
        pytest.param(b"tag=a&tag=b&tag=c", {"tag": ["a", "b", "c"]}, id="repeated"),
        pytest.param(b"a=&b", {"a": "", "b": ""}, id="blank-values"),
        pytest.param(b"password=hunter2&user=bob", {"password": REDACTED, "user": "bob"}, id="pw"),
        pytest.param(b"access%5Ftoken=abc123", {"access_token": REDACTED}, id="pct-encoded-key"),
        pytest.param(
            b"API-KEY=abc&api-key=def", {"API-KEY": REDACTED, "api-key": REDACTED}, id="ci"
        ),
        pytest.param(
            b"t=abc&t=def&token=1&token=2", {"t": ["abc", "def"], "token": [REDACTED] * 2}
        ),
        pytest.param(f"q={GITHUB_TOKEN}".encode(), {"q": REDACTED}, id="secret-looking-value"),
        pytest.param(b"q=Bearer%20abc", {"q": REDACTED}, id="pct-encoded-bearer"),
        pytest.param(b"name=%C3%A9t%C3%A9", {"name": "été"}, id="pct-utf8"),
        pytest.param("name=été".encode(), {"name": "été"}, id="raw-utf8"),
        pytest.param(b"x=%FF%00", {"x": "\\xff\\x00"}, id="pct-invalid-utf8-and-nul"),
        pytest.param(b"\xff\xfe=\x00\x01", {"\\xff\\xfe": "\\x00\\x01"}, id="binary"),
        pytest.param(b"msg=a%0D%0Ab", {"msg": "a\\r\\nb"}, id="pct-crlf"),
        pytest.param(b"q=a+b", {"q": "a b"}, id="plus-is-space"),
        pytest.param(b"", {}, id="empty"),
        pytest.param(b"&&&", {}, id="only-separators"),
    ],
)
def test_query(raw: bytes | str, expected: dict[str, str | list[str]]) -> None:
    assert Redactor().query(raw) == expected


def test_query_caps_keys_values_and_lengths() -> None:
    redactor = Redactor(max_keys=3, max_string=10)
    many = "&".join(f"k{i}=v" for i in range(100)) + "&k0=" + "&k0=".join("x" * 30)
    result = redactor.query(many)
    assert list(result) == ["k0", "k1", "k2"]
    assert isinstance(result["k0"], list)
    assert len(result["k0"]) == 20
    long_value = redactor.query(b"k=" + b"v" * 50)["k"]
    assert long_value == "v" * 9 + "…"
    long_key = next(iter(redactor.query(b"k" * 500 + b"=1")))
    assert len(long_key) == 100


def test_query_huge_input_is_bounded_and_drops_partial_pair() -> None:
    huge = b"a=1&b=" + b"x" * 1_000_000
    assert Redactor().query(huge) == {"a": "1"}
    pairs = Redactor(max_keys=10_000).query(b"&".join([b"k%d=1" % i for i in range(10_000)]))
    # Only the first 4096 bytes are parsed: k0..k599 fit (590 + 500 * 7 bytes), k600 is cut.
    assert list(pairs) == [f"k{i}" for i in range(600)]


def test_query_never_raises_on_wrong_type() -> None:
    assert Redactor().query(12345) == {}


# -- metadata -------------------------------------------------------------------------------


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class _Point:
    def __str__(self) -> str:
        return "Point(1,\n2)"


class _BrokenMapping(Mapping[str, object]):
    def __getitem__(self, key: str) -> object:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield "first"
        raise RuntimeError("broken iterator")

    def __len__(self) -> int:
        return 2


def test_metadata_redacts_and_cleans_nested_values() -> None:
    data: dict[str, object] = {
        "user": {"email": "a@example.com", "password": "hunter2", "prefs": {"apiKey": 1}},
        "note": "line1\nline2",
        "values": ["plain", JWT],
        "secret": {"nested": "whole subtree hidden"},
    }
    assert Redactor().metadata(data) == {
        "user": {"email": "a@example.com", "password": REDACTED, "prefs": {"apiKey": REDACTED}},
        "note": "line1\\nline2",
        "values": ["plain", REDACTED],
        "secret": REDACTED,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(True, True, id="bool"),
        pytest.param(42, 42, id="int"),
        pytest.param(1.5, 1.5, id="float"),
        pytest.param(math.nan, "nan", id="nan"),
        pytest.param(-math.inf, "-inf", id="neg-inf"),
        pytest.param(2**70, "1180591620717411303424", id="int-too-big-for-json"),
        pytest.param(10**5000, "int", id="int-too-big-for-str"),
        pytest.param((1, "a"), [1, "a"], id="tuple"),
        pytest.param(frozenset({7}), [7], id="frozenset"),
        pytest.param(b"\xffbin", "\\xffbin", id="bytes"),
        pytest.param(bytearray(b"ba"), "ba", id="bytearray"),
        pytest.param(Decimal("1.10"), "1.10", id="decimal"),
        pytest.param(datetime(2024, 1, 2, tzinfo=UTC), "2024-01-02 00:00:00+00:00", id="datetime"),
        pytest.param(_Point(), "Point(1,\\n2)", id="custom-str"),
        pytest.param(_BadStr(), "_BadStr", id="raising-str"),
        pytest.param(object, "<class 'object'>", id="type"),
    ],
)
def test_metadata_value_types(value: object, expected: JSONValue) -> None:
    assert Redactor().metadata({"v": value}) == {"v": expected}


def test_metadata_non_str_keys() -> None:
    data: dict[object, object] = {1: "a", (1, 2): "b", None: "c", b"k": "d", _BadStr(): "e"}
    result = Redactor().metadata(data)  # type: ignore[arg-type]
    assert result == {"1": "a", "(1, 2)": "b", "None": "c", "b'k'": "d", "_BadStr": "e"}
    long_key = next(iter(Redactor().metadata({"k\n" * 200: 1})))
    assert len(long_key) <= 100
    assert "\n" not in long_key


def test_metadata_depth() -> None:
    data = {"a": {"b": {"c": 1}}, "l": [[1]], "flat": 1}
    assert Redactor(max_depth=2).metadata(data) == {
        "a": {"b": "[TRUNCATED: depth]"},
        "l": ["[TRUNCATED: depth]"],
        "flat": 1,
    }
    assert Redactor(max_depth=1).metadata(data) == {
        "a": "[TRUNCATED: depth]",
        "l": "[TRUNCATED: depth]",
        "flat": 1,
    }
    assert Redactor(max_depth=3).metadata(data) == data


def test_metadata_cycles() -> None:
    node: dict[str, object] = {"name": "n"}
    node["self"] = node
    loop: list[object] = []
    loop.append(loop)
    shared = {"x": 1}
    result = Redactor().metadata({"node": node, "loop": loop, "s1": shared, "s2": shared})
    assert result == {
        "node": {"name": "n", "self": "[TRUNCATED: cycle]"},
        "loop": ["[TRUNCATED: cycle]"],
        "s1": {"x": 1},
        "s2": {"x": 1},  # shared, not cyclic
    }
    top: dict[str, object] = {}
    top["me"] = top
    assert Redactor().metadata(top) == {"me": "[TRUNCATED: cycle]"}


def test_metadata_caps_items_and_keys() -> None:
    redactor = Redactor(max_keys=3)
    result = redactor.metadata({"l": list(range(10)), "d": {str(i): i for i in range(10)}})
    assert result == {"l": [0, 1, 2], "d": {"0": 0, "1": 1, "2": 2}}
    top = redactor.metadata({str(i): i for i in range(10)})
    assert top == {"0": 0, "1": 1, "2": 2, "_truncated": True}


def test_metadata_size_budget_drops_trailing_keys() -> None:
    redactor = Redactor(max_metadata_bytes=1000, max_keys=100)
    data = {f"key{i:02d}": "v" * 100 for i in range(30)}
    result = redactor.metadata(data)
    assert result["_truncated"] is True
    assert len(orjson.dumps(result)) <= 1000
    kept = [key for key in result if key != "_truncated"]
    assert kept == [f"key{i:02d}" for i in range(len(kept))]  # a prefix, in order
    assert len(kept) >= 8
    assert all(result[key] == "v" * 100 for key in kept)


def test_metadata_size_budget_with_escaping_heavy_values() -> None:
    redactor = Redactor(max_metadata_bytes=300)
    data = {f"k{i}": '"\\' * 40 + "\u00e9" * 40 for i in range(5)}
    result = redactor.metadata(data)
    assert len(orjson.dumps(result)) <= 300
    assert result["_truncated"] is True


def test_metadata_huge_nested_structure_is_cheap_and_fits() -> None:
    leaf = {str(i): "x" * 400 for i in range(50)}
    level = {str(i): leaf for i in range(50)}
    data = {"big": {str(i): level for i in range(50)}, "small": 1}
    result = Redactor().metadata(data)
    assert result == {"_truncated": True}
    empties: list[object] = [[[[] for _ in range(50)] for _ in range(50)] for _ in range(50)]
    assert len(orjson.dumps(Redactor().metadata({"e": empties}))) <= 4096


def test_metadata_fits_exactly_without_marker() -> None:
    redactor = Redactor(max_metadata_bytes=32)
    assert redactor.metadata({"k": "v" * 24}) == {"k": "v" * 24}  # exactly 32 bytes
    assert redactor.metadata({"k": "v" * 25}) == {"_truncated": True}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(["not", "a", "mapping"], id="list"),
        pytest.param(None, id="none"),
        pytest.param(_BrokenMapping(), id="broken-mapping"),
    ],
)
def test_metadata_never_raises_on_bad_input(data: object) -> None:
    result = Redactor().metadata(data)  # type: ignore[arg-type]
    orjson.dumps(result)
    assert set(result) <= {"_truncated"}


def test_metadata_output_is_always_serializable() -> None:
    data = {"\ud800key": "\udcff\x00", "n": [math.nan, 2**65, {"\u2028": b"\xff"}]}
    result = Redactor().metadata(data)
    assert orjson.loads(orjson.dumps(result)) == {
        "\\ud800key": "\\xff\\x00",
        "n": ["nan", "36893488147419103232", {"\\u2028": "\\xff"}],
    }


# -- scalar ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param("user_id", 42, "42", id="int"),
        pytest.param("org", "acme\r\nINFO admin=1", "acme\\r\\nINFO admin=1", id="crlf"),
        pytest.param("reset_token", "abc", REDACTED, id="secret-key"),
        pytest.param("id", "Bearer abc", REDACTED, id="secret-value"),
        pytest.param("id", JWT, REDACTED, id="jwt-value"),
        pytest.param("id", b"\xffid", "\\xffid", id="bytes"),
        pytest.param("id", _BadStr(), "_BadStr", id="raising-str"),
        pytest.param("id", "x" * 1000, "x" * 499 + "…", id="long"),
    ],
)
def test_scalar(key: str, value: object, expected: str) -> None:
    assert Redactor().scalar(key, value) == expected


def test_secret_straddling_truncation_point_is_redacted() -> None:
    value = "x" * 495 + " " + GITHUB_TOKEN
    assert Redactor().scalar("id", value) == REDACTED


# -- property: a password never leaks -------------------------------------------------------

MARKER = "SECRETMARKER"
_secret_values = st.text(alphabet=string.ascii_letters + string.digits, min_size=4).map(
    lambda body: MARKER + body
)
_plain_keys = st.text(alphabet=string.ascii_lowercase + "_-", max_size=12)
_leaves: st.SearchStrategy[object] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(alphabet=string.ascii_lowercase + " \n\x1b", max_size=20),
)
_trees: st.SearchStrategy[object] = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_plain_keys, children, max_size=4),
    ),
    max_leaves=30,
)
_password_keys = st.sampled_from(["password", "Password", "user_password", "PASSWORD", "passwd"])


def _plant(tree: object, key: str, secret: object, path: list[int]) -> dict[str, object]:
    """Put {key: secret} into the first dict found along *path* (or wrap at the top)."""
    if not isinstance(tree, dict):
        return {"wrapped": tree, key: secret}
    node: dict[str, object] = tree
    for step in path:
        children = [child for child in node.values() if isinstance(child, dict)]
        if not children:
            break
        node = children[step % len(children)]
    node[key] = secret
    return tree


@given(
    tree=_trees,
    key=_password_keys,
    secret=st.one_of(
        _secret_values,
        st.lists(_secret_values, min_size=1, max_size=3),
        st.dictionaries(_plain_keys, _secret_values, min_size=1, max_size=3),
    ),
    path=st.lists(st.integers(min_value=0, max_value=10), max_size=6),
    max_depth=st.integers(min_value=1, max_value=8),
)
def test_property_password_value_never_serialized(
    tree: object, key: str, secret: object, path: list[int], max_depth: int
) -> None:
    data = _plant(tree, key, secret, path)
    result = Redactor(max_depth=max_depth).metadata(data)
    assert MARKER.encode() not in orjson.dumps(result)


flat_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=600),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=120), flat_values, max_size=60))
def test_flat_metadata_fast_path_equals_the_full_path(data: dict[str, object]) -> None:
    redactor = Redactor(max_metadata_bytes=2048)
    fast = redactor._metadata_flat(data)
    full = redactor._fit(*redactor._metadata_top(data))
    if fast is not None:
        assert fast == full
    assert redactor.metadata(data) == full


def test_flat_metadata_takes_the_fast_path_and_still_redacts() -> None:
    redactor = Redactor()
    data: dict[str, object] = {"reason": "dup", "count": 3, "password": "x", "note": "Bearer abc"}
    fast = redactor._metadata_flat(data)
    assert fast == {"reason": "dup", "count": 3, "password": REDACTED, "note": REDACTED}
    assert fast == redactor._fit(*redactor._metadata_top(data))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=120), flat_values), max_size=60),
    st.integers(min_value=1, max_value=80),
)
def test_metadata_from_pairs_equals_metadata_of_their_dict(
    pairs: list[tuple[str, object]], max_keys: int
) -> None:
    # record() queues metadata as a tuple of keys and one of values; repeated keys (which a
    # dict would have merged) and every limit give what the dict of the pairs gives.
    redactor = Redactor(max_metadata_bytes=2048, max_keys=max_keys)
    keys = tuple(key for key, _ in pairs)
    values = tuple(value for _, value in pairs)
    assert redactor.metadata_pairs(keys, values) == redactor.metadata(dict(pairs))


def test_metadata_from_pairs_refuses_tuples_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="zip"):
        Redactor().metadata_pairs(("a", "b"), (1,))
