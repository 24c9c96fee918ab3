"""`bastion up` pins `host:0` address variables to free ports before starting anything."""

from __future__ import annotations

import contextlib
import socket

import pytest

from bastion._settings import parse_addr
from bastion._up import ADDRESS_VARS, _free_port, _pin_ports


def test_a_port_found_free_stays_held_until_every_port_is_chosen() -> None:
    """The kernel may hand a just-released port out again: probing one port at a time and
    letting it go gave the proxy the graph's gRPC port in CI, and the proxy could not listen.
    A chosen port is now held, so no later probe can be given it."""
    with contextlib.ExitStack() as probes:
        port = _free_port("127.0.0.1", probes)
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))
    with socket.socket() as after:
        after.bind(("127.0.0.1", port))  # released once all are chosen, for the service to bind


def test_every_port_0_address_gets_a_port_of_its_own() -> None:
    env = _pin_ports(dict.fromkeys(ADDRESS_VARS, "127.0.0.1:0"))
    ports = [parse_addr(env[name])[1] for name in ADDRESS_VARS]
    assert 0 not in ports
    assert len(set(ports)) == len(ADDRESS_VARS), env


def test_fixed_and_unset_addresses_are_left_as_they_are() -> None:
    env = _pin_ports({"BASTION_PROXY_ADDR": "127.0.0.1:7070", "OTHER": "x"})
    assert env == {"BASTION_PROXY_ADDR": "127.0.0.1:7070", "OTHER": "x"}
