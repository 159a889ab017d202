"""Resolve the client IP of an HTTP request behind reverse proxies.

Uses Werkzeug ProxyFix's trust model: forwarding headers count only when trust
is configured explicitly (the default is none), and values are read from the
right-hand end of the chain, never from the client-controlled leftmost entry.
This defends against clients spoofing ``X-Forwarded-For`` / ``Forwarded`` when
the peer is not trusted, oversized headers (parsing reads a bounded amount
from the right), and garbage values (``unknown``, obfuscated ids, non-UTF-8
bytes), which fall back to the socket peer. It does not defend against a
trusted proxy that lies or a hop count that does not match the deployment: the
configuration is taken at its word.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Self, TypeAlias, cast

__all__ = ["ProxyTrust", "anonymize_ip", "resolve_client_ip"]

_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_HeaderName: TypeAlias = Literal["x-forwarded-for", "forwarded"]

_HEADER_BYTES: dict[str, bytes] = {"x-forwarded-for": b"x-forwarded-for", "forwarded": b"forwarded"}
_MAX_HOPS = 32
# Only the rightmost _MAX_ITEMS chain entries within the last _MAX_HEADER_BYTES
# bytes are examined; trusted proxies write only the right end of the chain.
_MAX_ITEMS = 64
_MAX_HEADER_BYTES = 8192
# Longest legitimate node is "[<IPv6 with embedded IPv4>]:<port>" (< 60 chars).
_MAX_NODE_LEN = 64
_PORT_RE = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")  # RFC 7239 node-port (incl. obfport)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_ACCEPTED_FORMS = (
    f"expected a hop count (0-{_MAX_HOPS}), an IP address or a CIDR network, "
    "e.g. '2', '192.168.1.10', '10.0.0.0/8', '::1'"
)


@dataclass(frozen=True, slots=True)
class ProxyTrust:
    """Which reverse proxies in front of the app may set forwarding headers.

    ``hops`` is the number of trusted proxies (the client is the ``hops``-th
    header value from the right); ``networks`` restricts trust to peers inside
    those networks and, without ``hops``, selects the rightmost untrusted value.
    """

    hops: int = 0
    networks: tuple[_Network, ...] = ()
    header: _HeaderName = "x-forwarded-for"

    def __post_init__(self) -> None:
        if isinstance(self.hops, bool) or not isinstance(self.hops, int):
            raise TypeError(f"hops must be an int, got {type(self.hops).__name__}")
        if not 0 <= self.hops <= _MAX_HOPS:
            raise ValueError(f"hops must be between 0 and {_MAX_HOPS}, got {self.hops}")
        if not isinstance(self.networks, tuple) or not all(
            isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network) for net in self.networks
        ):
            raise TypeError("networks must be a tuple of ipaddress.IPv4Network/IPv6Network")
        if self.header not in _HEADER_BYTES:
            raise ValueError(
                f"header must be 'x-forwarded-for' or 'forwarded', got {self.header!r}"
            )

    @classmethod
    def parse(cls, spec: str, header: str = "x-forwarded-for") -> Self:
        """Parse an ``AUDIT_LOG_TRUSTED_PROXIES`` value, e.g. ``"1, 10.0.0.0/8, ::1"``.

        Raises:
            ValueError: on an invalid item, more than one hop count, or an
                unsupported header name.
        """
        header_name = header.strip().lower()
        if header_name not in _HEADER_BYTES:
            raise ValueError(f"header must be 'x-forwarded-for' or 'forwarded', got {header!r}")
        hops: int | None = None
        networks: list[_Network] = []
        for raw_item in spec.split(","):
            item = raw_item.strip()
            if not item:
                continue
            if item.isascii() and item.isdigit():
                if hops is not None:
                    raise ValueError(
                        f"trusted proxies: at most one hop count allowed, got {hops} and {item!r}"
                    )
                digits = item.lstrip("0") or "0"
                if len(digits) > 2 or int(digits) > _MAX_HOPS:
                    raise ValueError(
                        f"trusted proxies: hop count {item!r} out of range; {_ACCEPTED_FORMS}"
                    )
                hops = int(digits)
                continue
            net = _parse_network(item)
            if net is None:
                raise ValueError(f"trusted proxies: invalid item {item!r}; {_ACCEPTED_FORMS}")
            if net not in networks:
                networks.append(net)
        return cls(hops=hops or 0, networks=tuple(networks), header=cast(_HeaderName, header_name))

    @property
    def enabled(self) -> bool:
        """Whether forwarding headers are consulted at all."""
        return self.hops > 0 or bool(self.networks)


def resolve_client_ip(
    peer: str | None, headers: Sequence[tuple[bytes, bytes]], trust: ProxyTrust
) -> str | None:
    """Return the client IP in normalized text form, or ``None`` if unknown.

    ``peer`` is the socket peer host; ``headers`` are ASGI-style ``(name, value)``
    byte pairs. Forwarding headers are used only as ``trust`` allows; an invalid
    chosen value yields the peer, never the forged string. Never raises.
    """
    peer_addr = _parse_node(peer) if isinstance(peer, str) else None
    if not trust.enabled or (
        trust.networks and (peer_addr is None or not _in_networks(peer_addr, trust.networks))
    ):
        return None if peer_addr is None else str(peer_addr)
    try:
        client = _client_from_headers(headers, trust)
    except Exception:  # malformed input (e.g. wrong types): contract is to never raise
        client = None
    if client is None:
        client = peer_addr
    return None if client is None else str(client)


def anonymize_ip(ip: str | None, mode: Literal["full", "truncate", "omit"]) -> str | None:
    """Reduce ``ip`` for storage: ``"full"`` keeps it, ``"omit"`` drops it and
    ``"truncate"`` keeps the IPv4 /24 or IPv6 /48 network address.

    An invalid or missing ``ip`` gives ``None``. Raises ``ValueError`` on an
    unknown ``mode``.
    """
    if mode not in ("full", "truncate", "omit"):
        raise ValueError(f"mode must be 'full', 'truncate' or 'omit', got {mode!r}")
    if mode == "omit" or not isinstance(ip, str):
        return None
    addr = _parse_address(ip)
    if addr is None:
        return None
    if mode == "full":
        return ip
    if isinstance(addr, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Address(int(addr) & 0xFFFF_FF00))
    return str(ipaddress.IPv6Address(int(addr) & ~((1 << 80) - 1)))


def _client_from_headers(
    headers: Sequence[tuple[bytes, bytes]], trust: ProxyTrust
) -> _Address | None:
    """Pick the client from the forwarding chain; ``None`` means "use the peer"."""
    chain = _chain(headers, _HEADER_BYTES[trust.header])
    if trust.hops:
        if len(chain) < trust.hops:
            return None
        return _node_address(chain[-trust.hops], trust.header)
    leftmost: _Address | None = None
    for entry in reversed(chain):
        addr = _node_address(entry, trust.header)
        if addr is None or not _in_networks(addr, trust.networks):
            return addr
        leftmost = addr
    return leftmost


def _chain(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Return the rightmost entries (at most ``_MAX_ITEMS``) of the joined header."""
    values = [value for key, value in headers if key.lower() == name]
    if not values:
        return []
    tail: list[bytes] = []
    size = 0
    for value in reversed(values):
        tail.append(value)
        size += len(value) + 1
        if size > _MAX_HEADER_BYTES:
            break
    raw = b",".join(reversed(tail))
    truncated = len(raw) > _MAX_HEADER_BYTES
    if truncated:
        raw = raw[-_MAX_HEADER_BYTES:]
    entries = raw.decode("latin-1").rsplit(",", _MAX_ITEMS)
    if truncated or len(entries) > _MAX_ITEMS:
        del entries[0]  # cut-off or unsplit remainder: not a whole entry
    return entries


def _node_address(entry: str, header: _HeaderName) -> _Address | None:
    node = entry if header == "x-forwarded-for" else _forwarded_for(entry)
    return None if node is None else _parse_node(node)


def _forwarded_for(element: str) -> str | None:
    """Return the unquoted ``for=`` value of an RFC 7239 element, if exactly one."""
    found: str | None = None
    for pair in element.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip().lower() == "for":
            if found is not None:
                return None
            found = value.strip()
    if found is not None and len(found) >= 2 and found[0] == found[-1] == '"':
        found = _QUOTED_PAIR_RE.sub(r"\1", found[1:-1])
    return found


def _parse_node(node: str) -> _Address | None:
    """Parse ``addr``, ``ipv4:port``, ``[ipv6]`` or ``[ipv6]:port``."""
    node = node.strip()
    if not node or len(node) > _MAX_NODE_LEN:
        return None
    if node[0] == "[":
        host, sep, port = node[1:].partition("]")
        if not sep or (port and not (port[0] == ":" and _PORT_RE.fullmatch(port[1:]))):
            return None
        return _parse_address(host)
    if node.count(":") == 1:
        host, _, port = node.partition(":")
        return _parse_address(host) if _PORT_RE.fullmatch(port) else None
    return _parse_address(node)


def _parse_address(text: str) -> _Address | None:
    """Parse a bare IP address; zone ids are rejected, IPv4-mapped IPv6 is unmapped."""
    if not text.isascii() or "%" in text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _parse_network(text: str) -> _Network | None:
    if not text.isascii() or "%" in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _in_networks(addr: _Address, networks: tuple[_Network, ...]) -> bool:
    return any(addr in net for net in networks)
