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

Joined circuits (docs/hidden.md section 5). A rendezvous point joins two circuits that
end at it; their two ends share one more layer, the end-to-end layer (a *virtual hop*
at depth MAX_DEPTH + 1, so its size does not depend on either side's depth). An end
with n real hops seals its message in the end-to-end layer at body[n:] (flag "end")
and all n real layers around it with flag "pass on", the rendezvous point's included
(`seal_joined`); the rendezvous point removes its layer from one circuit straight into
the backward cell of the other (`peel_joined_into`) and seals its layer of that one
(`reseal_joined`); the other end removes its n real layers and the end-to-end layer
(`open_joined`). The rendezvous point sees only the end-to-end ciphertext.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vx6.crypto.keys import KEY_LEN, StaticKey
from vx6.errors import CircuitFailure, CryptoError, DestroyReason
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

# The end-to-end layer of a joined circuit: a virtual hop one past the deepest real one.
E2E_LAYER_SIZE = BODY_SIZE - LAYER_OVERHEAD * MAX_DEPTH  # layer_size(MAX_DEPTH + 1): 16277
E2E_MESSAGE_SIZE = E2E_LAYER_SIZE - LAYER_OVERHEAD  # one relay message: 16260

_FLAG_PASS = 0
_FLAG_END = 1
_COUNTER_LIMIT = 2**64
_ZERO_FILL = bytes(LAYER_OVERHEAD * MAX_DEPTH)  # the most a hop's fill can be


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

    def swapped(self) -> HopKeys:
        """The same keys with the two directions exchanged: the far end of a joined
        circuit's end-to-end layer seals with the key the near end opens with."""
        return HopKeys(
            self.backward_key,
            self.forward_key,
            self.backward_nonce,
            self.forward_nonce,
            self.binding,
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

    def seal_in_place(self, buf: memoryview) -> None:
        """Encrypt buf[:-16] where it lies; the tag goes to the last 16 bytes."""
        self._aead.encrypt_into(self._next_nonce(), buf[:-TAG_LEN], None, buf)

    def open_into(self, ciphertext: memoryview, out: memoryview) -> None:
        """Decrypt into `out` (16 bytes shorter), which may be the ciphertext's own start.
        On a bad tag `out` holds unauthenticated bytes: the caller must drop it, and
        does, because the circuit is destroyed. The counter advances even on failure."""
        nonce = self._next_nonce()
        try:
            self._aead.decrypt_into(nonce, ciphertext, None, out)
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


# Every layer operation works in place on a writable buffer the caller owns, so a cell
# costs one AEAD pass per layer and no copies: the client writes its relay message into
# a fresh cell and seals every layer around it where it lies; a relay decrypts the layer
# it is owed straight into the cell it sends on.


def _check_body(body: memoryview) -> None:
    if len(body) != BODY_SIZE:
        raise CryptoError(f"a relay body is {BODY_SIZE} bytes")


def seal_layers(hops: Sequence[HopCrypto], body: memoryview) -> None:
    """Client, forward: wrap a relay message for the last of `hops` (outermost layer =
    hops[0]). `body` is a writable BODY_SIZE buffer with the message at
    body[n : n + relay_plaintext_size(n)], n = len(hops); afterwards it is the RELAY
    body. Layer d's plaintext (flag | inner) starts at body[d - 1], so each layer is
    sealed in place around the one inside it."""
    n = len(hops)
    if not 1 <= n <= MAX_DEPTH:
        raise CryptoError(f"a cell is wrapped for 1..{MAX_DEPTH} hops")
    _check_body(body)
    for depth in range(n, 0, -1):
        start, size = depth - 1, layer_size(depth)
        body[start] = _FLAG_END if depth == n else _FLAG_PASS
        hops[depth - 1].forward.seal_in_place(body[start : start + size])


def open_layers(hops: Sequence[HopCrypto], body: memoryview) -> tuple[int, memoryview]:
    """Client, backward, in place: remove layers from hops[0] on until one says it wrote
    the cell. Returns (index of that hop, a view of its relay message inside `body`);
    CryptoError on any bad layer."""
    _check_body(body)
    for index, hop in enumerate(hops):
        size = layer_size(index + 1)
        layer = body[index : index + size]
        hop.backward.open_into(layer, layer[: size - TAG_LEN])
        flag = body[index]
        if flag == _FLAG_END:
            return index, body[index + 1 : index + size - TAG_LEN]
        if flag != _FLAG_PASS:
            raise CryptoError("bad layer flag")
    raise CryptoError("no hop of this circuit wrote the cell")


def peel_into(hop: HopCrypto, body: memoryview, depth: int, out: memoryview) -> bool:
    """Relay, forward: decrypt this hop's layer of `body` into `out` (BODY_SIZE + 1
    bytes, whatever they held: the rest of `out` is set to zeros here). out[0] is the
    layer's flag. Returns True if the cell is for this hop, its relay message being
    out[1 : 1 + relay_plaintext_size(depth)]; else out[1:] is the body to pass on, its
    zero fill included."""
    _check_body(body)
    if len(out) != BODY_SIZE + 1:
        raise CryptoError("peel needs a buffer one byte longer than a body")
    size = layer_size(depth)
    hop.forward.open_into(body[:size], out[: size - TAG_LEN])
    out[size - TAG_LEN :] = _ZERO_FILL[: BODY_SIZE + 1 - (size - TAG_LEN)]
    flag = out[0]
    if flag == _FLAG_END:
        return True
    if flag != _FLAG_PASS or depth >= MAX_DEPTH:
        raise CryptoError("bad layer flag")
    return False


def seal_layer(hop: HopCrypto, body: memoryview, depth: int, *, originated: bool) -> None:
    """Relay or exit, backward, in place: `body` (BODY_SIZE, writable) holds at
    body[1 : 1 + relay_plaintext_size(depth)] this hop's own relay message (originated)
    or the first bytes of the body the next hop sent; [flag | those bytes] is sealed
    where it lies, so body[:layer_size(depth)] becomes this hop's layer, and the rest of
    the body is set to zeros (the fill)."""
    _check_body(body)
    size = layer_size(depth)
    body[0] = _FLAG_END if originated else _FLAG_PASS
    hop.backward.seal_in_place(body[:size])
    body[size:] = _ZERO_FILL[: BODY_SIZE - size]


# --- joined circuits (docs/hidden.md section 5) -------------------------------------------


def _check_joined_hops(n: int) -> None:
    if not 1 <= n <= MAX_DEPTH:
        raise CryptoError(f"a joined circuit end has 1..{MAX_DEPTH} real hops, not {n}")


def seal_joined(hops: Sequence[HopCrypto], e2e: HopCrypto, body: memoryview) -> None:
    """An end of a joined circuit, towards the other end: `body` (BODY_SIZE, writable)
    holds the relay message at body[n + 1 : n + 1 + E2E_MESSAGE_SIZE], n = len(hops)
    (the last of them the rendezvous point). The end-to-end layer is sealed at
    body[n : n + E2E_LAYER_SIZE] with flag "end", the bytes after it up to the real
    layers' extent are set to zeros, and the n real layers are sealed around it with
    flag "pass on" at every hop; afterwards `body` is the RELAY body."""
    n = len(hops)
    _check_joined_hops(n)
    _check_body(body)
    body[n] = _FLAG_END
    e2e.forward.seal_in_place(body[n : n + E2E_LAYER_SIZE])
    end = n + relay_plaintext_size(n)
    body[n + E2E_LAYER_SIZE : end] = _ZERO_FILL[: end - n - E2E_LAYER_SIZE]
    for depth in range(n, 0, -1):
        start = depth - 1
        body[start] = _FLAG_PASS
        hops[start].forward.seal_in_place(body[start : start + layer_size(depth)])


def open_joined(hops: Sequence[HopCrypto], e2e: HopCrypto, body: memoryview) -> memoryview:
    """An end of a joined circuit, from the other end, in place: remove the n real
    layers (every one must say "pass on") and the end-to-end layer (which must say
    "end"). Returns a view of the relay message inside `body`. CryptoError on a bad tag
    or flag; CircuitFailure(PROTOCOL_ERROR) if a real hop (the rendezvous point, or a
    relay before it) wrote the cell: after the join only the other end writes."""
    n = len(hops)
    _check_joined_hops(n)
    _check_body(body)
    for index, hop in enumerate(hops):
        size = layer_size(index + 1)
        layer = body[index : index + size]
        hop.backward.open_into(layer, layer[: size - TAG_LEN])
        flag = body[index]
        if flag == _FLAG_END:
            detail = f"hop {index + 1} wrote a cell on a joined circuit"
            raise CircuitFailure(DestroyReason.PROTOCOL_ERROR, detail)
        if flag != _FLAG_PASS:
            raise CryptoError("bad layer flag")
    layer = body[n : n + E2E_LAYER_SIZE]
    e2e.backward.open_into(layer, layer[:-TAG_LEN])
    if body[n] != _FLAG_END:
        raise CryptoError("bad end-to-end layer flag")
    return body[n + 1 : n + 1 + E2E_MESSAGE_SIZE]


def peel_joined_into(hop: HopCrypto, body: memoryview, depth: int, out: memoryview) -> bool:
    """The rendezvous point, a forward cell of a joined circuit: decrypt this hop's layer
    of `body` into `out` (BODY_SIZE, whatever it held), so out[0] is the layer's flag
    and out[1:] the pass-on bytes: exactly where `reseal_joined` (`seal_layer`) wants
    them for the partner's backward cell, so the peeled cell is that cell's body. Unlike
    `peel_into`, "pass on" is accepted at MAX_DEPTH too. Returns True if the layer says
    "end" (a message for the rendezvous point: the caller refuses it); CryptoError on a
    bad tag or flag. Bytes of `out` past the layer are left as they were."""
    _check_body(body)
    if len(out) != BODY_SIZE:
        raise CryptoError("a joined peel writes one body")
    size = layer_size(depth)
    hop.forward.open_into(body[:size], out[: size - TAG_LEN])
    flag = out[0]
    if flag == _FLAG_END:
        return True
    if flag != _FLAG_PASS:
        raise CryptoError("bad layer flag")
    return False


def reseal_joined(partner: HopCrypto, body: memoryview, depth: int) -> None:
    """The rendezvous point, after `peel_joined_into`: keep the end-to-end layer at
    body[1 : 1 + E2E_LAYER_SIZE], set the rest of the partner's pass-on bytes to zeros
    (whatever the sender or the buffer left there), and seal the partner's backward
    layer (flag "pass on") at `depth`, the partner circuit's depth here."""
    _check_joined_hops(depth)
    _check_body(body)
    end = 1 + relay_plaintext_size(depth)
    body[1 + E2E_LAYER_SIZE : end] = _ZERO_FILL[: end - 1 - E2E_LAYER_SIZE]
    seal_layer(partner, body, depth, originated=False)
