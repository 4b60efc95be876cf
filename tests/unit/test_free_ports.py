"""Tests and benches pick ports with `free_port`: two it hands out must never be the same port."""

from __future__ import annotations

from conftest import free_port


def test_free_port_never_hands_out_a_port_twice():
    # the kernel picks among about 14,000 ports at random: 3,000 picks repeat some hundreds of times
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
