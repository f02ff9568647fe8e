"""The link handshake: Noise XX or IK plus an identity proof, sans-IO.

Theory of operation. The Noise static key of a node is its X25519 *link key*; the node's
identity is its Ed25519 key. Each side puts its identity key and a signature by it over
its link key into its encrypted handshake payload, so once Noise completes each side knows
(a) the peer holds the private link key (Noise proves it) and (b) the peer's identity key
vouches for that link key (the signature proves it). A dialer that knows the owner's link
key from a signed node record uses IK (one round trip); otherwise XX.

Message flow (each message is length-prefixed on the wire by the caller):
  XX:  I -> R  [pattern byte] e            (empty payload)
       R -> I  e, ee, s, es                (payload: R's proof)
       I -> R  s, se                       (payload: I's proof)
  IK:  I -> R  [pattern byte] e, es, s, ss (payload: I's proof)
       R -> I  e, ee, se                   (payload: R's proof)
"""

from __future__ import annotations

from dataclasses import dataclass

from vx6.crypto.keys import Identity, StaticKey, check_link_key_proof, link_key_proof
from vx6.crypto.noise import CipherState, HandshakeState
from vx6.errors import CloseCode, CryptoError, DecodeError, IdentityMismatch, RemoteProtocolError
from vx6.wire.frames import (
    LINK_PROLOGUE,
    PATTERN_IK,
    PATTERN_XX,
    HandshakePayload,
    decode_handshake_payload,
    encode_handshake_payload,
)


@dataclass(frozen=True)
class HandshakeResult:
    send: CipherState
    receive: CipherState
    peer_identity: bytes
    peer_link_key: bytes
    peer_window: int
    handshake_hash: bytes


class LinkHandshake:
    """Drives one side of the handshake. Feed peer messages to `receive`; send what
    `start` and `receive` return; `result` is set once both sides are authenticated."""

    def __init__(
        self,
        *,
        initiator: bool,
        identity: Identity,
        link_key: StaticKey,
        ephemeral: bytes,
        remote_link_key: bytes | None = None,
        expected_identity: bytes | None = None,
        window: int = 2 * 1024 * 1024,
        link_proof: bytes | None = None,
    ) -> None:
        self._initiator = initiator
        self._identity = identity
        self._link_key = link_key
        self._ephemeral = ephemeral
        self._expected = expected_identity
        self._window = window
        # The proof is the same for every link of a node, so the adapter signs it once
        # per process and passes it in; without it, it is signed only when the message
        # that carries it is built (never for a peer that sends nothing valid).
        self._link_proof = link_proof
        self._encoded_payload: bytes | None = None
        self._pattern = PATTERN_IK if (initiator and remote_link_key) else PATTERN_XX
        self._remote_link_key = remote_link_key
        self._noise: HandshakeState | None = None
        self._peer_identity: bytes | None = None
        self._peer_window = 0
        self.result: HandshakeResult | None = None
        if initiator:
            self._noise = self._make_noise(self._pattern)

    @property
    def _payload(self) -> bytes:
        if self._encoded_payload is None:
            proof = self._link_proof
            if proof is None:
                proof = link_key_proof(self._identity, self._link_key.public)
            self._encoded_payload = encode_handshake_payload(
                HandshakePayload(self._identity.public, proof, self._window)
            )
        return self._encoded_payload

    def _make_noise(self, pattern: int) -> HandshakeState:
        name = "IK" if pattern == PATTERN_IK else "XX"
        return HandshakeState(
            name,
            self._initiator,
            self._link_key.private_bytes(),
            self._ephemeral,
            remote_static=self._remote_link_key if self._initiator else None,
            prologue=LINK_PROLOGUE + bytes([pattern]),
        )

    def start(self) -> bytes:
        """The initiator's first message (pattern byte included)."""
        if not self._initiator or self._noise is None:
            raise RuntimeError("only the initiator starts")
        payload = self._payload if self._pattern == PATTERN_IK else b""
        return bytes([self._pattern]) + self._noise.write_message(payload)

    def receive(self, message: bytes) -> bytes | None:
        """Process one peer message; return our reply, if any. Raises RemoteProtocolError."""
        try:
            return self._receive(message)
        except (CryptoError, DecodeError) as exc:
            raise RemoteProtocolError(CloseCode.HANDSHAKE_FAILED, str(exc)) from exc

    def _receive(self, message: bytes) -> bytes | None:
        if self._noise is None:  # responder, first message: learn the pattern
            if not message or message[0] not in (PATTERN_XX, PATTERN_IK):
                raise DecodeError("first handshake message names no known pattern")
            self._pattern = message[0]
            self._noise = self._make_noise(self._pattern)
            payload = self._noise.read_message(message[1:])
            if self._pattern == PATTERN_IK:
                self._check_proof(payload)
                reply = self._noise.write_message(self._payload)
                self._finish()
                return reply
            if payload:
                raise DecodeError("XX first message carries no payload")
            return self._noise.write_message(self._payload)
        payload = self._noise.read_message(message)
        self._check_proof(payload)
        if self._initiator and self._pattern == PATTERN_XX:
            reply = self._noise.write_message(self._payload)
            self._finish()
            return reply
        self._finish()
        return None

    def _check_proof(self, payload: bytes) -> None:
        assert self._noise is not None
        proof = decode_handshake_payload(payload)
        link = self._noise.remote_static
        if link is None or not check_link_key_proof(proof.identity, link, proof.link_proof):
            raise CryptoError("peer's identity does not vouch for its link key")
        if self._expected is not None and proof.identity != self._expected:
            raise IdentityMismatch(proof.identity, "peer is not the node we dialled")
        self._peer_identity = proof.identity
        self._peer_window = proof.window

    def _finish(self) -> None:
        assert self._noise is not None and self._peer_identity is not None
        if not self._noise.complete:
            raise CryptoError("handshake incomplete")
        send, receive = self._noise.split()
        link = self._noise.remote_static
        assert link is not None
        self.result = HandshakeResult(
            send,
            receive,
            self._peer_identity,
            link,
            self._peer_window,
            self._noise.handshake_hash,
        )
