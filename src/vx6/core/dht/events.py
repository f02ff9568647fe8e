"""Events the DHT node reports to its adapter, named in the past tense."""

from __future__ import annotations

from dataclasses import dataclass

from vx6.core.dht.contacts import Address, Contact


@dataclass(frozen=True, slots=True)
class RecordFound:
    """A value lookup holds a valid record at least as new as the local one; the lookup
    goes on for one more round in the background (then LookupFinished)."""

    lookup_id: int
    target: bytes
    records: tuple[bytes, ...]
    rounds: int
    rpcs: int


@dataclass(frozen=True, slots=True)
class LookupFinished:
    lookup_id: int
    target: bytes
    found: bool
    records: tuple[bytes, ...]  # every valid record seen, newest per slot
    closest: tuple[Contact, ...]  # window members that answered, closest first
    rounds: int
    rpcs: int


@dataclass(frozen=True, slots=True)
class PublishFinished:
    lookup_id: int
    target: bytes
    stored: int  # holders that acknowledged the STORE
    attempted: int


@dataclass(frozen=True, slots=True)
class ValueStored:
    """We accepted a record another node stored with us."""

    target: bytes
    signer: bytes
    seq: int
    source: Address


@dataclass(frozen=True, slots=True)
class RecordRefused:
    """A record (in a STORE to us or an answer to our lookup) failed a rule."""

    reason: str
    target: bytes
    source: Address


@dataclass(frozen=True, slots=True)
class EquivocationDetected:
    """One key signed two different records with the same sequence number: both are
    evidence; the second was refused."""

    signer: bytes
    target: bytes
    held: bytes
    offered: bytes
    source: Address


@dataclass(frozen=True, slots=True)
class RepublishDue:
    """An owned record expires soon: the owner should sign a fresh one (higher sequence)
    and publish it."""

    target: bytes
    record: bytes


Event = (
    RecordFound
    | LookupFinished
    | PublishFinished
    | ValueStored
    | RecordRefused
    | EquivocationDetected
    | RepublishDue
)
