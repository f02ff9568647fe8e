"""What a link costs before and after authentication: one read buffer for the process,
one identity proof per key.

Theory of operation. Every link of the process reads into one READ_BUFFER (the event loop
reads for one protocol at a time, and the link core copies out whatever it keeps before
`receive` returns, so nothing refers to the buffer between reads); a link that is not
authenticated yet is offered only its first PRE_AUTH_READ bytes, so an unauthenticated
connection costs no buffer of its own and reads little per turn. The identity proof a
node puts in its handshake (a signature over its link key) is the same for every link:
it is signed once per (identity, link key) and reused, so accepting a connection signs
nothing.
"""

from __future__ import annotations

from vx6.crypto.keys import Identity, StaticKey, link_key_proof

READ_BUFFER = 512 * 1024
PRE_AUTH_READ = 4 * 1024  # a handshake message is at most about 200 bytes
# One read buffer for every link of the process, made by the first read; before its
# handshake a link is offered only its first PRE_AUTH_READ bytes.
_shared_read: memoryview | None = None
_shared_small: memoryview | None = None
# The identity proof over a link key is the same for every link: sign it once.
_proofs: dict[tuple[bytes, bytes], bytes] = {}
_MAX_PROOFS = 16  # one per identity of the process; tests run a few in one process


def read_buffer(authenticated: bool) -> memoryview:
    global _shared_read, _shared_small
    if _shared_read is None or _shared_small is None:
        _shared_read = memoryview(bytearray(READ_BUFFER))
        _shared_small = _shared_read[:PRE_AUTH_READ]
    return _shared_read if authenticated else _shared_small


def link_proof(identity: Identity, link_key: StaticKey) -> bytes:
    key = (identity.public, link_key.public)
    proof = _proofs.get(key)
    if proof is None:
        if len(_proofs) >= _MAX_PROOFS:
            _proofs.clear()
        proof = _proofs[key] = link_key_proof(identity, link_key.public)
    return proof
