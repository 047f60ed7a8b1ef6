"""The SSRF guard: which addresses a webhook may reach, and resolving a host to checked ones.

A webhook URL is the user's; its host may name (or later be re-pointed to) an address inside
the operator's network: loopback, a private range, the cloud metadata service at
169.254.169.254. Every address a host resolves to is classified here; one refused address
refuses the URL (a resolver may return them in any order). The delivery then connects to the
addresses checked here and no others (see :mod:`.delivery`), so a second DNS answer cannot
swap a public address for an internal one between the check and the connection.

Operators allow networks with ``IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS`` (e.g. ``127.0.0.0/8``).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_HINT = "an operator may allow networks with IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS"


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[Network, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in pairs)


# Most specific first: the first match names the reason.
_REFUSED_V4 = _nets(
    ("169.254.169.254/32", "cloud metadata"),
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
    ("192.0.2.0/24", "reserved (documentation)"),
    ("192.88.99.0/24", "reserved (6to4 relay)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved (benchmarking)"),
    ("198.51.100.0/24", "reserved (documentation)"),
    ("203.0.113.0/24", "reserved (documentation)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes the broadcast address 255.255.255.255
)
_REFUSED_V6 = _nets(
    ("fd00:ec2::254/128", "cloud metadata"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
    ("100::/64", "reserved (discard-only)"),
    ("2001::/23", "reserved (IETF protocol assignments, Teredo)"),
    ("2001:db8::/32", "reserved (documentation)"),
    ("2002::/16", "reserved (6to4)"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "reserved (site-local)"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped (``::ffff:a.b.c.d``, which a
    dual-stack socket connects to a.b.c.d) or the well-known NAT64 prefix (``64:ff9b::/96``)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _classify(address: Address) -> str | None:
    table = _REFUSED_V4 if isinstance(address, ipaddress.IPv4Address) else _REFUSED_V6
    for network, reason in table:
        if address in network:
            return reason
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        return "reserved"  # outside global unicast: IPv4-compatible, unassigned, …
    return None


def refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why a webhook may not connect to ``address`` ("loopback", "private", …), or None.

    An IPv6 form of an IPv4 address is judged as that IPv4 address, and allowed when either
    form lies in an ``allowed`` network.
    """
    inner = embedded_ipv4(address)
    forms: list[Address] = [address] if inner is None else [address, inner]
    if any(form in net for form in forms for net in allowed if form.version == net.version):
        return None
    if inner is not None:
        # A mapped public address is that address; NAT64 of one is reached by the translator.
        return _classify(inner)
    return _classify(address)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The operator's allowed networks; ValueError naming the bad entry."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(
                f"IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS: {value!r} is not a network ({exc})"
            ) from exc
    return tuple(networks)


@functools.lru_cache(maxsize=8)
def _allowed_cached(values: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(values)


def allowed_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """``parse_networks``, remembered (settings do not change while a process runs)."""
    return _allowed_cached(tuple(values))


class AddressRefused(Exception):
    """The host resolved to an address a webhook may not reach (or did not resolve)."""

    def __init__(self, message: str, *, resolved: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.resolved = resolved


def ip_literal(host: str) -> Address | None:
    """``host`` as an IP address when it is one (``[...]`` already stripped), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(
    host: str, port: int, allowed: Sequence[Network], *, time_limit: float
) -> list[Address]:
    """Every address ``host`` resolves to, all checked, in the resolver's order.

    AddressRefused when the name does not resolve, or when any of its addresses is refused:
    the message names the kind of address, not the address (a user must not learn the
    operator's internal DNS from it).
    """
    literal = ip_literal(host)
    if literal is not None:
        addresses: list[Address] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(time_limit):
                infos = await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, UnicodeError, TimeoutError) as exc:
            raise AddressRefused("the host name does not resolve", resolved=False) from exc
        addresses = []
        for family, *_, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            # IPv6 sockaddrs may carry a zone ("fe80::1%eth0"): the address is what counts.
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise AddressRefused("the host name does not resolve", resolved=False)
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            what = "is" if literal is not None else "resolves to"
            raise AddressRefused(
                f"the host {what} an address webhooks may not reach ({reason}; {ALLOW_HINT})"
            )
    return addresses
