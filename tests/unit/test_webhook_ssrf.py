"""The webhook SSRF guard: which addresses are refused, what an operator can allow, and
resolving a host name to checked addresses."""

from __future__ import annotations

import ipaddress

import pytest

from imagegate.webhooks import ssrf

REFUSED = [
    # address, the kind named in the refusal
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.0.1", "link-local"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fd00:ec2::254", "cloud metadata"),
    ("ff02::1", "multicast"),
    ("fec0::1", "site-local"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "Teredo"),
    ("2002:7f00:1::1", "6to4"),
    ("100::1", "discard"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("::7f00:1", "reserved"),  # IPv4-compatible ::127.0.0.1 (deprecated form)
    ("4000::1", "reserved"),  # outside global unicast
    # IPv6 forms of refused IPv4 addresses are judged as those addresses
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 of 169.254.169.254
    ("64:ff9b::c0a8:101", "private"),  # NAT64 of 192.168.1.1
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "172.15.255.255",  # just below 172.16/12
    "172.32.0.1",  # just above it
    "100.63.255.255",  # just below 100.64/10
    "100.128.0.1",  # just above it
    "169.253.255.255",
    "223.255.255.255",  # just below multicast
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # IPv4-mapped public address
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_internal_addresses_are_refused(address: str, kind: str) -> None:
    reason = ssrf.refusal(ipaddress.ip_address(address))
    assert reason is not None, address
    assert kind in reason, (address, reason)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) is None


def test_operator_networks_allow_exactly_what_they_name() -> None:
    allowed = ssrf.parse_networks(["127.0.0.0/8", "fd00::/8"])
    assert ssrf.refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert ssrf.refusal(ipaddress.ip_address("127.9.9.9"), allowed) is None
    # Its IPv4-mapped form is the same address, so it is allowed too.
    assert ssrf.refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert ssrf.refusal(ipaddress.ip_address("fd00::5"), allowed) is None
    # Nothing more: other internal ranges stay refused.
    assert ssrf.refusal(ipaddress.ip_address("::1"), allowed) == "loopback"
    assert ssrf.refusal(ipaddress.ip_address("10.0.0.1"), allowed) == "private"
    assert ssrf.refusal(ipaddress.ip_address("169.254.169.254"), allowed) == "cloud metadata"
    assert ssrf.refusal(ipaddress.ip_address("fc00::1"), allowed) == "private (unique local)"


def test_a_bad_allowed_network_is_named() -> None:
    with pytest.raises(ValueError, match="not-a-net"):
        ssrf.parse_networks(["127.0.0.0/8", "not-a-net"])
    assert ssrf.parse_networks([" 10.1.2.3/8 "]) == (ipaddress.ip_network("10.0.0.0/8"),)


async def test_resolving_checks_every_address_of_a_name() -> None:
    # localhost resolves to loopback only: refused, and the message names the kind of
    # address but not the address itself.
    with pytest.raises(ssrf.AddressRefused) as refused:
        await ssrf.resolve("localhost", 80, (), time_limit=10)
    assert "loopback" in refused.value.message
    assert "127.0.0.1" not in refused.value.message
    assert refused.value.resolved
    # Allowed by the operator: every address comes back, all in the allowed networks.
    allowed = ssrf.parse_networks(["127.0.0.0/8", "::1/128"])
    addresses = await ssrf.resolve("localhost", 80, allowed, time_limit=10)
    assert addresses
    assert all(ssrf.refusal(a, allowed) is None for a in addresses)


async def test_resolving_literals_and_unknown_names() -> None:
    with pytest.raises(ssrf.AddressRefused, match="cloud metadata"):
        await ssrf.resolve("169.254.169.254", 80, (), time_limit=10)
    with pytest.raises(ssrf.AddressRefused, match="loopback"):
        await ssrf.resolve("::ffff:127.0.0.1", 80, (), time_limit=10)
    # Legacy numeric forms are resolved like the resolver (and a connection) would read them.
    with pytest.raises(ssrf.AddressRefused, match="loopback"):
        await ssrf.resolve("2130706433", 80, (), time_limit=10)
    with pytest.raises(ssrf.AddressRefused, match="does not resolve") as unknown:
        await ssrf.resolve("no-such-host.invalid", 80, (), time_limit=10)
    assert not unknown.value.resolved
    assert await ssrf.resolve("8.8.8.8", 443, (), time_limit=10) == [
        ipaddress.ip_address("8.8.8.8")
    ]
