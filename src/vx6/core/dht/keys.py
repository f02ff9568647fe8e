"""Where each record lives in the DHT, and the identity a DHT node speaks with.

DHT keys (256 bits, the same space as node ids):

    node record     node id of the signer (SHA-256("vx6-node-id\\0" + key))
    name claim      SHA-256("vx6-name-key\\0" + name)   (rotations of the name too)
    service record  SHA-256("vx6-service-key\\0" + signer key + service name)
    relay directory SHA-256("vx6-relays\\0" + bucket u8), bucket = node id[0] % 8:
                    a node record with the relay capability and an address is stored
                    here too, so a client that knows no relay can find some
                    (docs/dht.md "Relay directory")
    hidden-service  SHA-256("vx6-hidden-key\0" + blinded key + replica u8), replica 0
    descriptor      and 1: two replica sets of k nodes each (docs/hidden.md section 3)

A stored value must sit under a key computed from its own content ("wrong-key"
otherwise), so nobody can park a record where it does not belong.

`Credentials` bundle what the node core needs from an identity: its public key, a
signing callable, a verifying callable and the key -> node id function. The real ones
(`credentials_for`) use Ed25519 through `vx6.crypto`; the simulator injects cheap table
lookups instead, so that ten thousand nodes fit in minutes (see docs/dht.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from vx6.crypto.keys import Identity, node_id, verify
from vx6.wire.records import (
    Capability,
    HiddenDescriptorBody,
    Kind,
    NameClaimBody,
    NodeBody,
    Record,
    RotationBody,
    ServiceBody,
)

NAME_KEY_DOMAIN = b"vx6-name-key\x00"
SERVICE_KEY_DOMAIN = b"vx6-service-key\x00"
RELAY_DIRECTORY_DOMAIN = b"vx6-relays\x00"
RELAY_DIRECTORY_BUCKETS = 8
HIDDEN_KEY_DOMAIN = b"vx6-hidden-key\x00"
HIDDEN_REPLICAS = 2


def name_key(name: str) -> bytes:
    return hashlib.sha256(NAME_KEY_DOMAIN + name.encode("ascii")).digest()


def service_key(owner: bytes, service: str) -> bytes:
    return hashlib.sha256(SERVICE_KEY_DOMAIN + owner + service.encode("ascii")).digest()


def hidden_descriptor_key(blinded: bytes, replica: int) -> bytes:
    """Where replica `replica` (0 or 1) of the descriptors signed by `blinded` lives."""
    if not 0 <= replica < HIDDEN_REPLICAS:
        raise ValueError(f"replica must be 0..{HIDDEN_REPLICAS - 1}, got {replica}")
    return hashlib.sha256(HIDDEN_KEY_DOMAIN + bytes(blinded) + bytes([replica])).digest()


def hidden_descriptor_keys(blinded: bytes) -> tuple[bytes, ...]:
    """Both replica keys of `blinded`, replica 0 first."""
    return tuple(hidden_descriptor_key(blinded, r) for r in range(HIDDEN_REPLICAS))


def relay_directory_key(bucket: int) -> bytes:
    return hashlib.sha256(RELAY_DIRECTORY_DOMAIN + bytes([bucket])).digest()


RELAY_DIRECTORY_KEYS = tuple(relay_directory_key(b) for b in range(RELAY_DIRECTORY_BUCKETS))


def is_relay_directory_key(target: bytes) -> bool:
    return target in RELAY_DIRECTORY_KEYS


def relay_bucket(signer: bytes) -> int:
    """The directory bucket of a relay: fixed by its key, not chosen by it."""
    return node_id(signer)[0] % RELAY_DIRECTORY_BUCKETS


def record_keys(record: Record) -> tuple[bytes, ...]:
    """Every DHT key `record` may be stored under: its own (`record_key`) first, then,
    for a relay's node record with an address, its relay directory key, and for a
    descriptor its second replica key."""
    if record.kind == Kind.HIDDEN_DESCRIPTOR:
        record.parsed_body()  # DecodeError for a body of the wrong size
        return hidden_descriptor_keys(record.signer)
    own = record_key(record)
    if record.kind != Kind.NODE:
        return (own,)
    body = record.parsed_body()
    if isinstance(body, NodeBody) and body.capabilities & Capability.RELAY and body.addresses:
        return (own, RELAY_DIRECTORY_KEYS[relay_bucket(record.signer)])
    return (own,)


def record_key(record: Record) -> bytes:
    """The DHT key `record` must be stored under (DecodeError if its body is bad)."""
    if record.kind == Kind.NODE:
        return node_id(record.signer)
    body = record.parsed_body()
    if isinstance(body, NameClaimBody | RotationBody):
        # A rotation lives beside the claims of its name: one lookup finds both.
        return name_key(body.name)
    if isinstance(body, ServiceBody):
        return service_key(record.signer, body.service)
    if isinstance(body, HiddenDescriptorBody):
        return hidden_descriptor_key(record.signer, 0)
    raise ValueError(f"no DHT key for record kind {record.kind!r}")


@dataclass(frozen=True, slots=True)
class Credentials:
    public: bytes
    sign: Callable[[bytes], bytes]
    verify: Callable[[bytes, bytes, bytes], bool] = verify
    id_of: Callable[[bytes], bytes] = node_id


def credentials_for(identity: Identity) -> Credentials:
    """Ed25519 credentials of a real node."""
    return Credentials(identity.public, identity.sign)
