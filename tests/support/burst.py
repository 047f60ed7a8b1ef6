"""Many login attempts at once, from many loopback source addresses."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx


def burst(
    client_from: Callable[[str], httpx.Client],
    addresses: list[str],
    bodies: list[dict[str, str]],
) -> list[int]:
    """POST ``bodies`` to /v1/token all at once, spread over ``addresses`` (a client from
    ``client_from(address)`` and a thread per address, released together by a barrier); the
    statuses in the order of ``bodies``."""
    statuses = [0] * len(bodies)
    barrier = threading.Barrier(len(addresses))

    def run(slot: int) -> None:
        with client_from(addresses[slot]) as c:
            barrier.wait()
            for i in range(slot, len(bodies), len(addresses)):
                statuses[i] = c.post("/v1/token", json=bodies[i]).status_code

    threads = [threading.Thread(target=run, args=(s,)) for s in range(len(addresses))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses
