"""Tunables of the DHT core, in one frozen dataclass so tests and the simulator can
vary them without touching module globals."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DhtConfig:
    k: int = 20  # bucket size, contacts per answer, replicas per record
    alpha_interactive: int = 5  # parallel requests of a lookup a user waits for
    alpha_background: int = 2  # ... of joins, refreshes, republishes
    request_timeout: float = 2.0
    prefix_cap_bucket: int = 2  # contacts per /48 or /24 in one bucket
    prefix_cap_answer: int = 2  # ... in one NODES answer
    prefix_cap_lookup: int = 1  # ... in the window of closest nodes a lookup converges on
    replacement_cache: int = 8  # candidates kept per full bucket
    evict_after_failures: int = 2  # failed requests before a contact yields to a replacement
    drop_after_failures: int = 5  # ... before it is dropped even without a replacement
    refresh_interval: float = 3600.0  # a bucket nobody touched for this long is refreshed
    token_rotation: float = 300.0  # a token stays valid for one to two rotations
    proof_lifetime: float = 600.0  # a source that proved its address gets full answers
    proven_sources: int = 8192  # sources remembered as proved
    peer_tokens: int = 8192  # tokens remembered from responders, echoed in our requests
    housekeeping_interval: float = 30.0
    republish_interval: float = 3600.0  # owners re-store their records this often
    republish_margin: float = 6 * 3600.0  # and ask for a fresh record this long before expiry
    rate_per_second: float = 20.0  # datagrams per source address
    rate_burst: float = 60.0
    rate_sources: int = 4096  # source addresses tracked at once
    max_records: int = 20000  # records stored for others
    max_slots_per_target: int = 16  # (kind, signer, subject) slots under one DHT key
    background_answers: int = 20  # answers a value lookup still collects after it found one
    stale_corrections: int = 3  # STOREs a finished lookup sends to stale or empty holders


DEFAULT_CONFIG = DhtConfig()
