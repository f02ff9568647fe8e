"""Sans-IO Kademlia DHT (see docs/dht.md).

contacts.py  contacts, XOR distance, /48 and /24 prefixes for the diversity caps
config.py    tunables (DhtConfig)
keys.py      DHT keys of records; Credentials (sign, verify, key -> node id)
values.py    record rules for stored values; the record store
routing.py   k-buckets, ping-before-evict, replacement cache
lookup.py    one parallel iterative lookup
guards.py    store tokens, per-source rate limits
endpoint.py  inbound pipeline and the requests a node answers
node.py      DhtNode: lookups, publishing, republishing, bucket refresh
events.py    what the node reports
"""

from __future__ import annotations

from vx6.core.dht.config import DEFAULT_CONFIG, DhtConfig
from vx6.core.dht.contacts import Address, Contact
from vx6.core.dht.keys import Credentials, credentials_for, name_key, record_key, service_key
from vx6.core.dht.node import DhtNode

__all__ = [
    "DEFAULT_CONFIG",
    "Address",
    "Contact",
    "Credentials",
    "DhtConfig",
    "DhtNode",
    "credentials_for",
    "name_key",
    "record_key",
    "service_key",
]
