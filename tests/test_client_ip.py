"""Tests for client IP resolution behind reverse proxies."""

from __future__ import annotations

import ipaddress
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_middleware._client_ip import ProxyTrust, anonymize_ip, resolve_client_ip

Headers = list[tuple[bytes, bytes]]

PEER = "10.0.0.1"
CLIENT = "198.51.100.9"
NO_TRUST = ProxyTrust()
HOPS1 = ProxyTrust(hops=1)
HOPS2 = ProxyTrust(hops=2)
NETS = ProxyTrust.parse("10.0.0.0/8, 192.168.0.0/16, fd00::/8")
NETS_HOPS1 = ProxyTrust.parse("1, 10.0.0.0/8")
FWD1 = ProxyTrust(hops=1, header="forwarded")
FWD2 = ProxyTrust(hops=2, header="forwarded")
FWD_NETS = ProxyTrust.parse("10.0.0.0/8", header="Forwarded")


def xff(*values: str | bytes) -> Headers:
    return [(b"x-forwarded-for", v.encode() if isinstance(v, str) else v) for v in values]


def fwd(*values: str | bytes) -> Headers:
    return [(b"forwarded", v.encode() if isinstance(v, str) else v) for v in values]


@pytest.mark.parametrize(
    ("peer", "headers", "trust", "expected"),
    [
        # No trust: headers are never consulted.
        pytest.param("203.0.113.7", xff("1.1.1.1"), NO_TRUST, "203.0.113.7", id="no-trust-xff"),
        pytest.param(
            "203.0.113.7", fwd("for=1.1.1.1"), NO_TRUST, "203.0.113.7", id="no-trust-forwarded"
        ),
        pytest.param("::ffff:203.0.113.7", [], NO_TRUST, "203.0.113.7", id="no-trust-mapped-peer"),
        pytest.param("2001:DB8::0001", [], NO_TRUST, "2001:db8::1", id="no-trust-normalized"),
        # Networks configured but peer outside them: headers ignored.
        pytest.param("203.0.113.7", xff("1.1.1.1"), NETS, "203.0.113.7", id="untrusted-peer"),
        pytest.param(
            "203.0.113.7", xff("1.1.1.1"), NETS_HOPS1, "203.0.113.7", id="untrusted-peer-hops"
        ),
        pytest.param("10.9.9.9", xff(CLIENT), NETS_HOPS1, CLIENT, id="trusted-peer-hops"),
        pytest.param("fd00::5", xff(CLIENT), NETS, CLIENT, id="trusted-ipv6-peer"),
        pytest.param("::ffff:10.0.0.1", xff(CLIENT), NETS, CLIENT, id="trusted-mapped-peer"),
        # Hop counts.
        pytest.param(PEER, xff(CLIENT), HOPS1, CLIENT, id="hops1"),
        pytest.param(PEER, xff(f"6.6.6.6, {CLIENT}"), HOPS1, CLIENT, id="hops1-spoofed-left"),
        pytest.param(PEER, xff(f"{CLIENT}, 10.0.0.2"), HOPS2, CLIENT, id="hops2"),
        pytest.param(
            PEER, xff(f"6.6.6.6, {CLIENT}, 10.0.0.2"), HOPS2, CLIENT, id="hops2-spoofed-left"
        ),
        pytest.param(PEER, xff(CLIENT), HOPS2, PEER, id="chain-shorter-than-hops"),
        pytest.param(PEER, [], HOPS1, PEER, id="no-header"),
        pytest.param(PEER, xff("6.6.6.6", CLIENT), HOPS1, CLIENT, id="xff-multiple-lines"),
        pytest.param(PEER, xff(CLIENT, "10.0.0.2"), HOPS2, CLIENT, id="xff-lines-joined-in-order"),
        pytest.param(PEER, fwd(f"for={CLIENT}"), HOPS1, PEER, id="only-configured-header-xff"),
        pytest.param(PEER, xff(CLIENT), FWD1, PEER, id="only-configured-header-forwarded"),
        pytest.param(
            PEER, [(b"X-Forwarded-For", CLIENT.encode())], HOPS1, CLIENT, id="header-name-case"
        ),
        # Networks only: walk from the right, skipping trusted values.
        pytest.param(
            PEER,
            xff(f"6.6.6.6, {CLIENT}, 10.1.1.1, 192.168.1.1"),
            NETS,
            CLIENT,
            id="nets-walk",
        ),
        pytest.param(
            PEER, xff(f"6.6.6.6, 10.0.0.9, {CLIENT}"), NETS, CLIENT, id="nets-fake-left-entries"
        ),
        pytest.param(PEER, xff("10.9.9.9, 10.1.1.1"), NETS, "10.9.9.9", id="nets-all-trusted"),
        pytest.param(PEER, xff(f"{CLIENT}, unknown, 10.1.1.1"), NETS, PEER, id="nets-garbage"),
        pytest.param(PEER, [], NETS, PEER, id="nets-no-header"),
        pytest.param(
            PEER, fwd(f"for=6.6.6.6, for={CLIENT}, for=10.1.1.1"), FWD_NETS, CLIENT, id="nets-fwd"
        ),
        # XFF value forms.
        pytest.param(PEER, xff(f"{CLIENT}:5678"), HOPS1, CLIENT, id="xff-ipv4-port"),
        pytest.param(PEER, xff("[2001:db8::1]:443"), HOPS1, "2001:db8::1", id="xff-ipv6-port"),
        pytest.param(PEER, xff("2001:db8::1"), HOPS1, "2001:db8::1", id="xff-ipv6-bare"),
        pytest.param(PEER, xff(f"::ffff:{CLIENT}"), HOPS1, CLIENT, id="xff-ipv4-mapped"),
        pytest.param(PEER, xff("fe80::1%eth0"), HOPS1, PEER, id="xff-zone-id"),
        pytest.param(PEER, xff(f"{CLIENT}:99999999"), HOPS1, PEER, id="xff-bad-port"),
        # Forwarded (RFC 7239).
        pytest.param(
            PEER,
            fwd(f'for="{CLIENT}:8080";proto=http;by=203.0.113.43'),
            FWD1,
            CLIENT,
            id="fwd-quoted-port",
        ),
        pytest.param(
            PEER,
            fwd('for="[2001:db8:cafe::17]:4711"'),
            FWD1,
            "2001:db8:cafe::17",
            id="fwd-ipv6-brackets-port",
        ),
        pytest.param(PEER, fwd('for="[2001:db8::1]"'), FWD1, "2001:db8::1", id="fwd-ipv6-brackets"),
        pytest.param(PEER, fwd(f"proto=https; For={CLIENT}"), FWD1, CLIENT, id="fwd-key-case"),
        pytest.param(PEER, fwd(f'for="{CLIENT}:_abc"'), FWD1, CLIENT, id="fwd-obfuscated-port"),
        pytest.param(PEER, fwd("for=_hidden"), FWD1, PEER, id="fwd-obfuscated-id"),
        pytest.param(PEER, fwd('for="_hidden"'), FWD1, PEER, id="fwd-quoted-obfuscated-id"),
        pytest.param(PEER, fwd("for=unknown"), FWD1, PEER, id="fwd-unknown"),
        pytest.param(PEER, fwd("proto=https"), FWD1, PEER, id="fwd-no-for"),
        pytest.param(PEER, fwd(f"for={CLIENT};for=6.6.6.6"), FWD1, PEER, id="fwd-duplicate-for"),
        pytest.param(PEER, fwd(f'for="{CLIENT}'), FWD1, PEER, id="fwd-unterminated-quote"),
        pytest.param(
            PEER, fwd(f"for=6.6.6.6, for={CLIENT}, for=10.0.0.2"), FWD2, CLIENT, id="fwd-hops2"
        ),
        pytest.param(
            PEER, fwd("for=6.6.6.6", f"for={CLIENT}"), FWD1, CLIENT, id="fwd-multiple-lines"
        ),
        pytest.param(
            PEER, fwd(f"for={CLIENT}", "for=10.0.0.2"), FWD2, CLIENT, id="fwd-lines-in-order"
        ),
        pytest.param(
            PEER,
            fwd(f'for="6.6.6.6, for=7.7.7.7", for={CLIENT}'),
            FWD1,
            CLIENT,
            id="fwd-quoted-comma-on-left",
        ),
        # Garbage values fall back to the peer.
        pytest.param(PEER, xff("unknown"), HOPS1, PEER, id="unknown"),
        pytest.param(PEER, xff(""), HOPS1, PEER, id="empty"),
        pytest.param(PEER, xff("not-an-ip"), HOPS1, PEER, id="hostname"),
        pytest.param(PEER, xff("1.2.3.4.5"), HOPS1, PEER, id="too-many-octets"),
        pytest.param(PEER, xff("999.1.1.1"), HOPS1, PEER, id="octet-out-of-range"),
        pytest.param(PEER, xff("01.2.3.4"), HOPS1, PEER, id="leading-zero"),
        pytest.param(PEER, xff("\uff11.\uff12.\uff13.\uff14"), HOPS1, PEER, id="fullwidth-digits"),
        pytest.param(PEER, xff(b"\xff\xfe\x00"), HOPS1, PEER, id="non-utf8"),
        pytest.param(PEER, xff(b"\xff\xfe, " + CLIENT.encode()), HOPS1, CLIENT, id="non-utf8-left"),
        # Peer missing or not an IP.
        pytest.param(None, [], NO_TRUST, None, id="no-peer"),
        pytest.param(None, xff(CLIENT), NO_TRUST, None, id="no-peer-no-trust-xff"),
        pytest.param(None, xff(CLIENT), HOPS1, CLIENT, id="no-peer-hops"),
        pytest.param(None, [], HOPS1, None, id="no-peer-hops-no-header"),
        pytest.param(None, xff(CLIENT), NETS, None, id="no-peer-nets"),
        pytest.param("/run/app.sock", [], NO_TRUST, None, id="unix-socket-peer"),
        pytest.param("/run/app.sock", xff(CLIENT), HOPS1, CLIENT, id="unix-socket-peer-hops"),
        pytest.param("garbage", xff("unknown"), HOPS1, None, id="garbage-peer-garbage-header"),
        pytest.param(f"{CLIENT}:443", [], NO_TRUST, CLIENT, id="peer-with-port"),
    ],
)
def test_resolve_client_ip(
    peer: str | None, headers: Headers, trust: ProxyTrust, expected: str | None
) -> None:
    assert resolve_client_ip(peer, headers, trust) == expected


BIG = 64 * 1024


@pytest.mark.parametrize(
    ("headers", "trust", "expected"),
    [
        pytest.param(xff("6.6.6.6," * (BIG // 8) + CLIENT), HOPS1, CLIENT, id="xff-64k-hops1"),
        pytest.param(xff("6.6.6.6," * (BIG // 8) + CLIENT), HOPS2, "6.6.6.6", id="xff-64k-hops2"),
        pytest.param(xff("x" * BIG), HOPS1, PEER, id="xff-64k-single-value"),
        pytest.param(xff("x" * BIG + "," + CLIENT), HOPS1, CLIENT, id="xff-64k-left-garbage"),
        pytest.param(xff(*["6.6.6.6"] * 2000, CLIENT), HOPS1, CLIENT, id="xff-2000-lines"),
        pytest.param(xff(b"\xff" * BIG), HOPS1, PEER, id="xff-64k-binary"),
        pytest.param(
            fwd("for=6.6.6.6;" * (BIG // 12) + f",for={CLIENT}"), FWD1, CLIENT, id="fwd-64k"
        ),
        pytest.param(fwd(";" * BIG), FWD1, PEER, id="fwd-64k-separators"),
    ],
)
def test_huge_headers(headers: Headers, trust: ProxyTrust, expected: str) -> None:
    assert resolve_client_ip(PEER, headers, trust) == expected


def test_huge_header_all_trusted_networks_is_sane() -> None:
    result = resolve_client_ip(PEER, xff("10.1.1.1," * (BIG // 9) + "10.2.2.2"), NETS)
    assert result is not None
    assert ipaddress.ip_address(result) in ipaddress.ip_network("10.0.0.0/8")


def test_malformed_header_types_fall_back_to_peer() -> None:
    headers: Headers = [(b"x-forwarded-for", "1.1.1.1")]  # type: ignore[list-item]
    assert resolve_client_ip(PEER, headers, HOPS1) == PEER


@pytest.mark.parametrize(
    ("spec", "header", "expected"),
    [
        pytest.param("", "x-forwarded-for", ProxyTrust(), id="empty"),
        pytest.param("  ", "x-forwarded-for", ProxyTrust(), id="whitespace"),
        pytest.param("0", "x-forwarded-for", ProxyTrust(), id="zero-hops"),
        pytest.param("2", "x-forwarded-for", ProxyTrust(hops=2), id="hops"),
        pytest.param(" 32 ", "x-forwarded-for", ProxyTrust(hops=32), id="max-hops"),
        pytest.param(
            "10.0.0.0/8, ::1",
            "x-forwarded-for",
            ProxyTrust(
                networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
            ),
            id="networks",
        ),
        pytest.param(
            "1, 192.168.1.10,",
            "x-forwarded-for",
            ProxyTrust(hops=1, networks=(ipaddress.ip_network("192.168.1.10/32"),)),
            id="hops-and-address-trailing-comma",
        ),
        pytest.param(
            "10.1.2.3/8,10.0.0.0/8",
            "x-forwarded-for",
            ProxyTrust(networks=(ipaddress.ip_network("10.0.0.0/8"),)),
            id="non-strict-and-deduplicated",
        ),
        pytest.param(
            "2001:db8::/32", "x-forwarded-for", ProxyTrust.parse("2001:db8::1/32"), id="ipv6-cidr"
        ),
        pytest.param("1", " Forwarded ", ProxyTrust(hops=1, header="forwarded"), id="forwarded"),
    ],
)
def test_parse_accepts(spec: str, header: str, expected: ProxyTrust) -> None:
    assert ProxyTrust.parse(spec, header) == expected


@pytest.mark.parametrize(
    ("spec", "header", "message"),
    [
        pytest.param("abc", "x-forwarded-for", r"invalid item 'abc'.*CIDR network", id="word"),
        pytest.param(
            "10.0.0.0/33", "x-forwarded-for", r"invalid item '10\.0\.0\.0/33'", id="bad-prefix"
        ),
        pytest.param("1.2.3", "x-forwarded-for", r"invalid item '1\.2\.3'", id="short-ipv4"),
        pytest.param("-1", "x-forwarded-for", r"invalid item '-1'.*hop count", id="negative"),
        pytest.param("33", "x-forwarded-for", r"hop count '33' out of range", id="too-many-hops"),
        pytest.param("9" * 5000, "x-forwarded-for", r"out of range", id="huge-hop-count"),
        pytest.param("1, 2", "x-forwarded-for", r"at most one hop count", id="two-hop-counts"),
        pytest.param("fe80::1%eth0", "x-forwarded-for", r"invalid item 'fe80::1%eth0'", id="zone"),
        pytest.param("\uff11", "x-forwarded-for", r"invalid item '\uff11'", id="fullwidth-digit"),
        pytest.param("1", "x-real-ip", r"header must be .*'x-real-ip'", id="bad-header"),
    ],
)
def test_parse_rejects(spec: str, header: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProxyTrust.parse(spec, header)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"hops": -1}, ValueError, id="negative-hops"),
        pytest.param({"hops": 33}, ValueError, id="too-many-hops"),
        pytest.param({"hops": "1"}, TypeError, id="str-hops"),
        pytest.param({"hops": True}, TypeError, id="bool-hops"),
        pytest.param({"header": "X-Forwarded-For"}, ValueError, id="header-not-normalized"),
        pytest.param({"header": "x-real-ip"}, ValueError, id="bad-header"),
        pytest.param({"networks": ("10.0.0.0/8",)}, TypeError, id="str-network"),
        pytest.param({"networks": [ipaddress.ip_network("::1")]}, TypeError, id="list-networks"),
    ],
)
def test_direct_construction_validates(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ProxyTrust(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("trust", "enabled"),
    [
        pytest.param(NO_TRUST, False, id="default"),
        pytest.param(HOPS1, True, id="hops"),
        pytest.param(ProxyTrust.parse("::1"), True, id="networks"),
    ],
)
def test_enabled(trust: ProxyTrust, enabled: bool) -> None:
    assert trust.enabled is enabled


Mode = Literal["full", "truncate", "omit"]


@pytest.mark.parametrize(
    ("ip", "mode", "expected"),
    [
        pytest.param("203.0.113.77", "full", "203.0.113.77", id="full-ipv4"),
        pytest.param("2001:db8:1:2::3", "full", "2001:db8:1:2::3", id="full-ipv6"),
        pytest.param("203.0.113.77", "truncate", "203.0.113.0", id="truncate-ipv4"),
        pytest.param("2001:db8:1:2::3", "truncate", "2001:db8:1::", id="truncate-ipv6"),
        pytest.param("::ffff:203.0.113.77", "truncate", "203.0.113.0", id="truncate-mapped"),
        pytest.param("203.0.113.77", "omit", None, id="omit"),
        pytest.param(None, "full", None, id="none-full"),
        pytest.param(None, "truncate", None, id="none-truncate"),
        pytest.param("unknown", "full", None, id="invalid-full"),
        pytest.param("203.0.113.77:80", "truncate", None, id="invalid-truncate"),
    ],
)
def test_anonymize_ip(ip: str | None, mode: Mode, expected: str | None) -> None:
    assert anonymize_ip(ip, mode) == expected


def test_anonymize_ip_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode must be"):
        anonymize_ip("203.0.113.77", "hash")  # type: ignore[arg-type]


_header_names = st.sampled_from([b"x-forwarded-for", b"forwarded", b"host", b"X-Forwarded-For"])
_ip_like = st.ip_addresses().map(str)
_header_value = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.one_of(_ip_like, st.sampled_from(["unknown", "_hidden", "for=", '"', "[", "]", ":80"])),
        max_size=6,
    ).map(lambda parts: ",".join(parts).encode()),
    _ip_like.map(lambda ip: f'for="[{ip}]:80";proto=https'.encode()),
)
_headers = st.lists(st.tuples(_header_names, _header_value), max_size=5)
_trusts = st.builds(
    ProxyTrust,
    hops=st.integers(0, 32),
    networks=st.lists(
        st.sampled_from(["10.0.0.0/8", "::/0", "0.0.0.0/0", "2001:db8::/32", "203.0.113.5"]).map(
            ipaddress.ip_network
        ),
        max_size=3,
    ).map(tuple),
    header=st.sampled_from(["x-forwarded-for", "forwarded"]),
)
_peers = st.one_of(st.none(), _ip_like, st.text(max_size=50))


@settings(database=None)
@given(peer=_peers, headers=_headers, trust=_trusts)
def test_resolve_never_raises_and_returns_ip(
    peer: str | None, headers: Headers, trust: ProxyTrust
) -> None:
    result = resolve_client_ip(peer, headers, trust)
    assert result is None or str(ipaddress.ip_address(result)) == result


@settings(database=None)
@given(peer=st.one_of(st.none(), st.ip_addresses()), headers=_headers)
def test_no_trust_always_returns_peer(
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None, headers: Headers
) -> None:
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        expected: str | None = str(peer.ipv4_mapped)
    else:
        expected = None if peer is None else str(peer)
    assert resolve_client_ip(None if peer is None else str(peer), headers, NO_TRUST) == expected
