"""What a worker advertises and which of a peer's endpoints it dials: pure rules, checked
alone (the network-namespace tests in test_cluster_addresses.py run them for real)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from velo_am.transport._addresses import (
    Interface,
    advertised_address,
    choose_endpoint,
    listen_endpoint,
    match_interfaces,
)


def nic(name: str, address: str, *, up: bool = True) -> Interface:
    return Interface(name, ipaddress.IPv4Interface(address), up)


HOST = [
    nic("lo", "127.0.0.1/8"),
    nic("eth0", "10.0.0.7/24"),
    nic("ib0", "192.168.5.7/16"),
    nic("docker0", "172.17.0.1/16"),
    nic("eth1", "169.254.3.3/16"),  # link-local: no DHCP answered
    nic("eth2", "10.9.0.7/24", up=False),
]


def advertised(bound: str, *, advertise: str | None = None, interface: str | None = None) -> str:
    return advertised_address(bound, advertise=advertise, interface=interface, interfaces=HOST)


def test_a_wildcard_bind_advertises_the_usable_addresses_of_the_host() -> None:
    expected = "tcp://10.0.0.7:5555 tcp://192.168.5.7:5555"
    assert advertised("tcp://0.0.0.0:5555") == expected
    assert advertised("tcp://*:5555") == expected


def test_a_host_with_no_usable_interface_advertises_loopback() -> None:
    alone = [nic("lo", "127.0.0.1/8")]
    address = advertised_address(
        "tcp://0.0.0.0:7", advertise=None, interface=None, interfaces=alone
    )
    assert address == "tcp://127.0.0.1:7"


def test_a_specific_bind_advertises_itself() -> None:
    assert advertised("tcp://10.0.0.7:5555") == "tcp://10.0.0.7:5555"
    assert advertised("ipc:///tmp/w.sock") == "ipc:///tmp/w.sock"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("node7.cluster", "tcp://node7.cluster:5555"),
        ("10.0.0.99", "tcp://10.0.0.99:5555"),
        ("10.0.0.99:6000", "tcp://10.0.0.99:6000"),
        ("tcp://gateway:6000", "tcp://gateway:6000"),
        ("a:1, b", "tcp://a:1 tcp://b:5555"),
        ("[fd00::7]", "tcp://[fd00::7]:5555"),
    ],
)
def test_advertise_says_it_outright(given: str, expected: str) -> None:
    assert advertised("tcp://0.0.0.0:5555", advertise=given) == expected


@pytest.mark.parametrize("given", ["0.0.0.0", "tcp://0.0.0.0:1", "tcp://nohost", " , "])
def test_an_address_nobody_can_dial_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="advertise"):
        advertised("tcp://0.0.0.0:5555", advertise=given)


def test_advertising_a_bare_host_needs_a_tcp_port() -> None:
    with pytest.raises(ValueError, match="without a port"):
        advertised("ipc:///tmp/w.sock", advertise="node7")


def test_interfaces_are_chosen_with_nccls_syntax() -> None:
    names = lambda spec: [each.name for each in match_interfaces(spec, HOST)]  # noqa: E731
    assert names("eth") == ["eth0", "eth1"]  # prefixes; eth2 is down
    assert names("=eth0") == ["eth0"]
    assert names("=eth") == []
    assert names("ib,eth0") == ["eth0", "ib0"]
    assert names("^docker,lo,eth1") == ["eth0", "ib0"]
    with pytest.raises(ValueError, match="names no interface"):
        match_interfaces("^", HOST)


def test_an_interface_sets_what_a_wildcard_advertises_and_where_others_listen() -> None:
    assert advertised("tcp://0.0.0.0:5555", interface="ib") == "tcp://192.168.5.7:5555"
    assert listen_endpoint("tcp://0.0.0.0:0", "ib", HOST) == "tcp://0.0.0.0:0"
    assert listen_endpoint("tcp://127.0.0.1:0", "ib", HOST) == "tcp://192.168.5.7:0"
    assert listen_endpoint("tcp://127.0.0.1:0", None, HOST) == "tcp://127.0.0.1:0"
    with pytest.raises(ValueError, match=r"no interface up matches 'eth2' \(up: .*eth0"):
        listen_endpoint("tcp://127.0.0.1:0", "eth2", HOST)


def test_a_dialler_takes_the_endpoint_on_a_subnet_it_shares() -> None:
    two = "tcp://10.5.0.1:5555 tcp://192.168.9.1:5555"
    assert choose_endpoint(two, HOST) == "tcp://192.168.9.1:5555"  # ib0 is 192.168/16
    assert choose_endpoint(two, [nic("eth0", "10.5.0.3/24")]) == "tcp://10.5.0.1:5555"
    # None shared, or names only: the first.
    assert choose_endpoint(two, [nic("eth0", "10.7.0.3/24")]) == "tcp://10.5.0.1:5555"
    assert choose_endpoint("tcp://a:1 tcp://b:1", HOST) == "tcp://a:1"
    assert choose_endpoint("tcp://10.0.0.1:5555", []) == "tcp://10.0.0.1:5555"
    # Loopback shares a subnet with everything local, so it never decides.
    assert choose_endpoint("tcp://10.3.0.1:1 tcp://127.0.0.1:1", HOST) == "tcp://10.3.0.1:1"


async def test_an_address_that_cannot_be_advertised_leaves_no_port_bound() -> None:
    from velo_am import Worker

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bind = f"tcp://127.0.0.1:{port}"
    with pytest.raises(ValueError, match="cannot advertise"):
        await Worker(bind=bind, advertise="0.0.0.0").start()
    async with Worker(bind=bind) as worker:  # the port is free again
        assert worker.address == bind
