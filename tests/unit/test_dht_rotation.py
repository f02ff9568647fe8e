"""Rotation records live in the DHT beside the claims of their name."""

from __future__ import annotations

import os
import time

from vx6.core.dht.keys import credentials_for, name_key, record_key
from vx6.core.dht.node import DhtNode
from vx6.core.records import make_record
from vx6.crypto.keys import Identity
from vx6.wire.records import RotationBody, decode_record


def test_a_rotation_is_stored_under_its_name_key_and_accepted() -> None:
    old, new = Identity(os.urandom(32)), Identity(os.urandom(32))
    now = time.time()
    _, raw = make_record(old, RotationBody("alice", new.public), 5, now, 3600)
    assert record_key(decode_record(raw)) == name_key("alice")
    node = DhtNode(credentials_for(old), entropy=os.urandom, now=now)
    node.publish(raw, now)  # raises RecordRejected if the DHT's rules refused it
    assert len(node.store) == 1
