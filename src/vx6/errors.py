"""Typed errors shared by every layer, and the wire codes that go out with them.

Each error says whose fault it is and, where it ends a link, a circuit or a stream, which
wire code goes out with it. Protocol errors are split the way h11 splits them:

- `RemoteProtocolError`: the peer broke the protocol. It carries the `CloseCode` that
  closes the link it came on. Cores raise it on bad peer input; a receive path that sees
  one escape closes that link with `code` (and the close is logged, rate-limited).
- `LocalProtocolError`: our own code (or its caller) asked for something the protocol
  forbids: a bug or a misuse, never the peer's fault. A core that translates peer input
  into such a call re-raises it as a `RemoteProtocolError` (core/link.py does this for
  stream state transitions, like h11's receive_data).

Anything else that escapes a receive path (net/link.py, net/dht.py) is a bug: logged
with its traceback (rate-limited), the link closed with `CloseCode.INTERNAL_ERROR`, the
node kept running. This module is a leaf: it imports nothing from vx6, so every layer
may import it.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Why a link ends. Sent in a CLOSE frame and logged on both sides."""

    NORMAL = 0
    PROTOCOL_ERROR = 1  # peer sent a frame we cannot parse or that breaks the state machine
    # 2 is reserved (was FRAME_TOO_LARGE, never sent: oversized frames are PROTOCOL_ERROR)
    HANDSHAKE_FAILED = 3  # Noise or identity proof failed
    IDENTITY_MISMATCH = 4  # peer's key is not the one we dialled for
    IDLE_TIMEOUT = 5
    FLOW_CONTROL = 6  # peer sent more than the credit we granted
    SHUTDOWN = 7  # the node is stopping
    DECRYPT_FAILED = 8
    RESOURCE_LIMIT = 9  # the peer made us queue more than a link may hold (e.g. it never reads)
    RATE_LIMITED = 10  # the peer sent control frames (PING, OPEN, RECORDS) faster than allowed
    INTERNAL_ERROR = 11  # a bug of ours while handling the link's input: not the peer's fault


class DestroyReason(IntEnum):
    """Why a circuit ends; carried in DESTROY and propagated hop by hop unchanged."""

    NONE = 0  # the client closed it
    PROTOCOL_ERROR = 1
    HOP_LIMIT = 2  # an EXTEND beyond MAX_DEPTH, or a CREATE with an impossible depth
    DECRYPT_FAILED = 3  # an onion layer failed its tag: tampering, replay or reorder
    RESOURCE_LIMIT = 4  # circuit table full or memory budget exceeded
    RATE_LIMITED = 5  # too many creations from one source
    CONNECT_FAILED = 6  # the relay could not reach the next hop
    LINK_LOST = 7  # a link on the path went away
    HANDSHAKE_FAILED = 8  # ntor failed (wrong onion key or node id)
    SHUTDOWN = 9
    NOT_A_RELAY = 10  # EXTEND asked of a node that has not opted in to relaying
    IDLE = 11  # no cell either way for the relay's idle timeout


class StreamError(IntEnum):
    """Why a stream could not open or was reset. Distinct messages for the user."""

    UNKNOWN_SERVICE = 1
    NOT_ALLOWED = 2
    TARGET_REFUSED = 3
    LINK_LOST = 4
    PROTOCOL_ERROR = 5
    CANCELLED = 6
    RESOURCE_LIMIT = 7
    CIRCUIT_LOST = 8  # a relay on the stream's circuit went away or the circuit broke
    # Client-side only (never on the wire, but share one numbering for messages):
    UNKNOWN_NAME = 100
    OWNER_UNREACHABLE = 101
    KEY_MISMATCH = 102
    NO_ROUTE = 103  # not enough relays known to build the requested path
    # Hidden services (docs/hidden.md section 8), client side:
    NO_DESCRIPTOR = 104  # no valid descriptor under either replica key
    NOT_AUTHORIZED = 105  # an allow-list descriptor without an entry for this client
    INTROS_UNREACHABLE = 106  # every intro failed to build or refused the introduction
    RENDEZVOUS_FAILED = 107  # every rendezvous candidate failed or never joined


STREAM_ERROR_MESSAGES: dict[StreamError, str] = {
    StreamError.UNKNOWN_SERVICE: (
        "unknown service: the owner does not publish a service by that name"
    ),
    StreamError.NOT_ALLOWED: "not allowed: the owner's allow-list does not include this node's key",
    StreamError.TARGET_REFUSED: (
        "target refused: the owner's local target did not accept the connection"
    ),
    StreamError.LINK_LOST: "link lost: the connection to the owner's node went away",
    StreamError.PROTOCOL_ERROR: "protocol error on the stream",
    StreamError.CANCELLED: "stream cancelled",
    StreamError.RESOURCE_LIMIT: "the owner's node is over its stream limit",
    StreamError.CIRCUIT_LOST: (
        "circuit lost: a relay on the path went away or the circuit was destroyed"
    ),
    StreamError.UNKNOWN_NAME: "unknown name: no record for this owner in the local registry",
    StreamError.OWNER_UNREACHABLE: "owner unreachable: could not open a link to the owner's node",
    StreamError.KEY_MISMATCH: (
        "key mismatch: the owner's key differs from the key this name is pinned or bound to"
    ),
    StreamError.NO_ROUTE: "no route: not enough usable relays known for the requested hops",
    StreamError.NO_DESCRIPTOR: (
        "no descriptor for this alias: the DHT holds no valid descriptor (is the service running?)"
    ),
    StreamError.NOT_AUTHORIZED: (
        "not authorized: the hidden service's allow-list does not include this node's key"
    ),
    StreamError.INTROS_UNREACHABLE: (
        "every intro unreachable: no introduction point of the hidden service answered"
    ),
    StreamError.RENDEZVOUS_FAILED: (
        "rendezvous failed: the hidden service did not join any rendezvous point in time"
    ),
}


class VX6Error(Exception):
    """Base of every error VX6 raises on purpose (tests/unit/test_errors.py holds every
    exception class defined in vx6 to it)."""


class LinkError(VX6Error):
    """A link ended or must end; carries the code that goes out on the wire. Raised as
    such for outcomes a caller sees (a dial that failed, a link or circuit that is closed,
    a local open over the stream limit); a peer's fault is the subclass
    `RemoteProtocolError`, so `except LinkError` catches both."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


class RemoteProtocolError(LinkError):
    """The peer broke the protocol: `code` closes the link it came on, `reason` says
    how (it goes out in the CLOSE frame and into the log)."""


class LocalProtocolError(VX6Error):
    """We were asked to do something the protocol forbids: a bug or a misuse in our own
    code or its caller, never the peer's fault. It closes no link by itself."""


class DecodeError(RemoteProtocolError):
    """Bytes from outside could not be parsed. Always the sender's fault; on a link it
    closes with PROTOCOL_ERROR."""

    def __init__(self, reason: str) -> None:
        super().__init__(CloseCode.PROTOCOL_ERROR, reason)
        self.args = (reason,)  # str() is the reason alone, as callers quote it


class TransitionError(LocalProtocolError):
    """An input that a stream's current state does not allow (core/streams.py). Local
    as raised; core/link.py re-raises one caused by a peer frame as a
    RemoteProtocolError(PROTOCOL_ERROR)."""


class CircuitFailure(VX6Error):
    """Raised inside the circuit machines when a circuit must go; it surfaces as one
    `CircuitDestroyed` event carrying the same reason and detail. Circuit-scoped: the
    circuit is destroyed with `reason`, the link that carried it stays up. Every raise
    today is on peer input (a cell the circuit's state does not allow)."""

    def __init__(self, reason: DestroyReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RecordRejected(VX6Error):
    """A well-formed record failed the acceptance rules (signature, expiry, sequence).
    The sender's (or the record signer's) fault, but no protocol error: the record is
    dropped and counted, the link stays up."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CryptoError(VX6Error):
    """A signature, AEAD tag or handshake check failed, or a crypto primitive was given
    a bad argument. Whose fault depends on the caller: receive paths translate it into a
    RemoteProtocolError (DECRYPT_FAILED, HANDSHAKE_FAILED) or a circuit's DESTROY."""


class NotAuthorized(VX6Error):
    """A hidden service's allow-list descriptor holds no entry for this client's key
    (docs/hidden.md section 3); the client reports StreamError.NOT_AUTHORIZED."""


class IdentityMismatch(RemoteProtocolError):
    """The peer proved another identity than the one dialled; `presented` is the key it
    proved (so the dialler can say whom it reached instead)."""

    def __init__(self, presented: bytes, reason: str) -> None:
        super().__init__(CloseCode.IDENTITY_MISMATCH, reason)
        self.presented = presented


class StreamFailed(VX6Error):
    """A stream could not be opened or was reset; `code` selects the user-facing message."""

    def __init__(self, code: StreamError, detail: str = "") -> None:
        msg = STREAM_ERROR_MESSAGES.get(code, code.name)
        super().__init__(f"{msg}{': ' + detail if detail else ''}")
        self.code = code
        self.detail = detail


class UsageError(VX6Error):
    """The local user gave bad input (bad name, bad port, forbidden target)."""


class ListenError(VX6Error):
    """The node cannot listen where it was told to (the port is taken, the address is
    not this host's, the name does not resolve): the environment's fault, or the user's."""
