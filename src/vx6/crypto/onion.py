"""Onion circuits: the ntor handshake that keys each hop, and the per-hop AEAD layers.

Theory of operation.

Handshake (tor-spec "The ntor handshake", with our own protocol id). The relay has a
long-term X25519 *onion key* b, B = b*G, published in its signed node record, and an id
ID (for VX6 the 32-byte node id of its identity key). The client picks x, sends
`ID | B | X` (the onionskin); the relay picks y and answers `Y | AUTH`:

    secret_input = EXP(X,y) | EXP(X,b) | ID | B | X | Y | PROTOID
    KEY_SEED     = HMAC-SHA256(key = PROTOID ":key_extract", secret_input)
    verify       = HMAC-SHA256(key = PROTOID ":verify", secret_input)
    auth_input   = verify | ID | B | Y | X | PROTOID | "Server"
    AUTH         = HMAC-SHA256(key = PROTOID ":mac", auth_input)
    keys         = HKDF-Expand-SHA256(PRK = KEY_SEED, info = PROTOID ":key_expand", L)

The client computes the same from EXP(Y,x) and EXP(B,x) and accepts only if AUTH
matches, which proves the answer came from the holder of b. `protoid` and the id length
are parameters so the code can be checked against Tor's published vectors
(tests/vectors/ntor_arti.json); VX6 uses PROTOID below and 32-byte ids. Randomness (x,
y) comes in from the caller.

Layers. Each hop gets two AES-256-GCM keys and two 12-byte nonce bases, one pair per
direction. The nonce of the n-th cell in a direction is `base XOR n` (n as a 96-bit
big-endian integer), and both ends count, so a dropped, replayed or reordered cell fails
its tag at the next hop. A layer's plaintext is `flag u8 | inner`: flag 1 means "this
layer's hop is the end" (forward: the cell is for this hop; backward: this hop wrote
it), flag 0 means "pass it on". A layer costs LAYER_OVERHEAD (17) bytes, so the hop at
depth d (1-based) sees a ciphertext of `layer_size(d)` bytes at the front of the
fixed-size body, and fills the rest with zeros so every cell on every link has the same
size. The zero fill is not authenticated and is never read: each hop decrypts only the
prefix it is owed.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vx6.crypto.keys import KEY_LEN, StaticKey
from vx6.errors import CryptoError
from vx6.wire.cells import BODY_SIZE

PROTOID = b"vx6-ntor-curve25519-sha256-1"
TOR_PROTOID = b"ntor-curve25519-sha256-1"
NODE_ID_LEN = 32
NTOR_REPLY_LEN = 2 * KEY_LEN
TAG_LEN = 16
LAYER_OVERHEAD = TAG_LEN + 1
NONCE_LEN = 12
BINDING_LEN = 32
# forward key | backward key | forward nonce | backward nonce | circuit binding
HOP_KEY_MATERIAL = 2 * KEY_LEN + 2 * NONCE_LEN + BINDING_LEN
MAX_DEPTH = 6  # five relays and the exit; see docs/circuits.md

_FLAG_PASS = 0
_FLAG_END = 1
_FLAGS = (b"\x00", b"\x01")
_COUNTER_LIMIT = 2**64


def _h(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    if not 0 < length <= 255 * 32:
        raise CryptoError(f"HKDF cannot produce {length} bytes")
    blocks: list[bytes] = []
    previous = b""
    for counter in range(1, -(-length // 32) + 1):
        previous = _h(prk, previous + info + bytes([counter]))
        blocks.append(previous)
    return b"".join(blocks)[:length]


def _derive(
    protoid: bytes, secret_input: bytes, auth_fields: bytes, key_len: int
) -> tuple[bytes, bytes]:
    """(AUTH, key material) from the shared secret input."""
    key_seed = _h(protoid + b":key_extract", secret_input)
    verify = _h(protoid + b":verify", secret_input)
    auth = _h(protoid + b":mac", verify + auth_fields + protoid + b"Server")
    return auth, hkdf_expand(key_seed, protoid + b":key_expand", key_len)


@dataclass(frozen=True, slots=True)
class NtorClientState:
    """What the client keeps between sending the onionskin and reading the reply."""

    relay_id: bytes
    onion_public: bytes
    x_private: bytes
    x_public: bytes
    protoid: bytes


def ntor_client_start(
    relay_id: bytes,
    onion_public: bytes,
    x_private: bytes,
    *,
    protoid: bytes = PROTOID,
    id_len: int = NODE_ID_LEN,
) -> tuple[NtorClientState, bytes]:
    """Begin a handshake with the relay (id, onion key B); returns (state, ID | B | X)."""
    if len(relay_id) != id_len or len(onion_public) != KEY_LEN:
        raise CryptoError("bad relay id or onion key length")
    x_public = StaticKey(x_private).public
    state = NtorClientState(relay_id, onion_public, x_private, x_public, protoid)
    return state, relay_id + onion_public + x_public


def ntor_server(
    onionskin: bytes,
    relay_id: bytes,
    onion_keys: Sequence[StaticKey],
    y_private: bytes,
    *,
    key_len: int = HOP_KEY_MATERIAL,
    protoid: bytes = PROTOID,
) -> tuple[bytes, bytes]:
    """Answer an onionskin; returns (Y | AUTH, key material).

    `onion_keys` lists every onion key still accepted (the current one and the one
    before a rotation). CryptoError if the onionskin names another relay or key, or the
    client's point is degenerate."""
    id_len = len(relay_id)
    if len(onionskin) != id_len + 2 * KEY_LEN:
        raise CryptoError(f"an onionskin is {id_len + 2 * KEY_LEN} bytes")
    named_id = onionskin[:id_len]
    named_b = onionskin[id_len : id_len + KEY_LEN]
    x_public = onionskin[id_len + KEY_LEN :]
    if not hmac.compare_digest(named_id, relay_id):
        raise CryptoError("onionskin is for another relay")
    onion_key = next((k for k in onion_keys if hmac.compare_digest(k.public, named_b)), None)
    if onion_key is None:
        raise CryptoError("onionskin names an onion key this relay does not hold")
    y = StaticKey(y_private)
    secret_input = (
        y.dh(x_public) + onion_key.dh(x_public) + relay_id + named_b + x_public + y.public
    ) + protoid
    auth_fields = relay_id + named_b + y.public + x_public
    auth, keys = _derive(protoid, secret_input, auth_fields, key_len)
    return y.public + auth, keys


def ntor_client_finish(
    state: NtorClientState, reply: bytes, *, key_len: int = HOP_KEY_MATERIAL
) -> bytes:
    """Check the relay's AUTH and return the key material; CryptoError if it fails."""
    if len(reply) != NTOR_REPLY_LEN:
        raise CryptoError(f"an ntor reply is {NTOR_REPLY_LEN} bytes")
    y_public, auth = reply[:KEY_LEN], reply[KEY_LEN:]
    x = StaticKey(state.x_private)
    b = state.onion_public
    secret_input = (
        x.dh(y_public) + x.dh(b) + state.relay_id + b + state.x_public + y_public
    ) + state.protoid
    auth_fields = state.relay_id + b + y_public + state.x_public
    expected, keys = _derive(state.protoid, secret_input, auth_fields, key_len)
    if not hmac.compare_digest(expected, auth):
        raise CryptoError("ntor AUTH does not verify: not the relay's onion key")
    return keys


@dataclass(frozen=True, slots=True)
class HopKeys:
    forward_key: bytes
    backward_key: bytes
    forward_nonce: bytes
    backward_nonce: bytes
    # A secret only the client and this hop know, unique to the circuit: the client signs
    # it to prove its identity to the exit (end-to-end client authentication).
    binding: bytes

    @classmethod
    def from_material(cls, material: bytes) -> HopKeys:
        if len(material) != HOP_KEY_MATERIAL:
            raise CryptoError(f"hop key material is {HOP_KEY_MATERIAL} bytes")
        k, n = KEY_LEN, NONCE_LEN
        nonces = 2 * k
        return cls(
            material[:k],
            material[k : 2 * k],
            material[nonces : nonces + n],
            material[nonces + n : nonces + 2 * n],
            material[nonces + 2 * n :],
        )


class _Direction:
    __slots__ = ("_aead", "_base", "counter")

    def __init__(self, key: bytes, nonce_base: bytes) -> None:
        self._aead = AESGCM(key)
        self._base = int.from_bytes(nonce_base, "big")
        self.counter = 0

    def _next_nonce(self) -> bytes:
        n = self.counter
        if n >= _COUNTER_LIMIT:
            raise CryptoError("circuit nonce space exhausted")
        self.counter = n + 1
        return (self._base ^ n).to_bytes(NONCE_LEN, "big")

    def seal(self, plaintext: bytes | memoryview) -> bytes:
        return self._aead.encrypt(self._next_nonce(), plaintext, None)

    def open(self, ciphertext: bytes | memoryview) -> bytes:
        # The counter advances even on failure: the circuit is dead after one bad tag.
        nonce = self._next_nonce()
        try:
            return self._aead.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise CryptoError("onion layer fails authentication") from None


class HopCrypto:
    """One hop's two directions with their counters; the client keeps one per hop, and a
    relay keeps one per circuit."""

    __slots__ = ("backward", "binding", "forward")

    def __init__(self, keys: HopKeys) -> None:
        self.binding = keys.binding
        self.forward = _Direction(keys.forward_key, keys.forward_nonce)
        self.backward = _Direction(keys.backward_key, keys.backward_nonce)


def layer_size(depth: int) -> int:
    """Bytes of ciphertext at the front of a body for the hop at `depth` (1-based)."""
    return BODY_SIZE - LAYER_OVERHEAD * (depth - 1)


def relay_plaintext_size(depth: int) -> int:
    """Size of the innermost relay message exchanged with the hop at `depth`."""
    return BODY_SIZE - LAYER_OVERHEAD * depth


def _pad(data: bytes | memoryview) -> bytes:
    # One copy: join the data and the zero fill (slicing first would copy twice).
    return b"".join((data, bytes(BODY_SIZE - len(data))))


def encrypt_layers(hops: Sequence[HopCrypto], payload: bytes) -> bytes:
    """Client, forward: wrap `payload` for the last of `hops` (outermost = hops[0]).
    `payload` is relay_plaintext_size(len(hops)) bytes; the result is one RELAY body."""
    if not 1 <= len(hops) <= MAX_DEPTH:
        raise CryptoError(f"a cell is wrapped for 1..{MAX_DEPTH} hops")
    if len(payload) != relay_plaintext_size(len(hops)):
        raise CryptoError("payload size does not match the target hop")
    data = hops[-1].forward.seal(b"".join((_FLAGS[_FLAG_END], payload)))
    for hop in reversed(hops[:-1]):
        data = hop.forward.seal(b"".join((_FLAGS[_FLAG_PASS], data)))
    return data


def decrypt_layers(hops: Sequence[HopCrypto], body: bytes) -> tuple[int, bytes]:
    """Client, backward: remove layers from hops[0] on until one says it wrote the cell.
    Returns (index of that hop, its relay message); CryptoError on any bad layer."""
    if len(body) != BODY_SIZE:
        raise CryptoError(f"a relay body is {BODY_SIZE} bytes")
    data: bytes | memoryview = body
    for index, hop in enumerate(hops):
        plaintext = hop.backward.open(memoryview(data)[: layer_size(index + 1)])
        if plaintext[0] == _FLAG_END:
            return index, plaintext[1:]
        if plaintext[0] != _FLAG_PASS:
            raise CryptoError("bad layer flag")
        data = plaintext[1:]
    raise CryptoError("no hop of this circuit wrote the cell")


def peel(hop: HopCrypto, body: bytes, depth: int) -> tuple[bool, bytes]:
    """Relay, forward: remove this hop's layer. Returns (True, relay message) if the cell
    is for this hop, else (False, the body to forward, zero-filled to full size)."""
    if len(body) != BODY_SIZE:
        raise CryptoError(f"a relay body is {BODY_SIZE} bytes")
    plaintext = hop.forward.open(memoryview(body)[: layer_size(depth)])
    flag = plaintext[0]
    if flag == _FLAG_END:
        return True, plaintext[1:]
    if flag != _FLAG_PASS or depth >= MAX_DEPTH:
        raise CryptoError("bad layer flag")
    return False, _pad(memoryview(plaintext)[1:])


def add_layer(hop: HopCrypto, body: bytes, depth: int, *, originated: bool) -> bytes:
    """Relay, backward: wrap a cell for the client. `body` is either this hop's own relay
    message (originated=True, relay_plaintext_size(depth) bytes) or the full body received
    from the next hop, whose first relay_plaintext_size(depth) bytes are its ciphertext."""
    size = relay_plaintext_size(depth)
    if len(body) != (size if originated else BODY_SIZE):
        raise CryptoError("body size does not match this hop")
    flag = _FLAG_END if originated else _FLAG_PASS
    return _pad(hop.backward.seal(b"".join((_FLAGS[flag], memoryview(body)[:size]))))
