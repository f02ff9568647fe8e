"""Typed errors shared by every layer.

Each error says whose fault it is (the peer's, the local user's, or the environment's)
and, where it ends a link or a stream, which wire code goes out with it. This module is
a leaf: it imports nothing from vx6, so every layer may import it.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Why a link ends. Sent in a CLOSE frame and logged on both sides."""

    NORMAL = 0
    PROTOCOL_ERROR = 1  # peer sent a frame we cannot parse or that breaks the state machine
    FRAME_TOO_LARGE = 2
    HANDSHAKE_FAILED = 3  # Noise or identity proof failed
    IDENTITY_MISMATCH = 4  # peer's key is not the one we dialled for
    IDLE_TIMEOUT = 5
    FLOW_CONTROL = 6  # peer sent more than the credit we granted
    SHUTDOWN = 7  # the node is stopping
    DECRYPT_FAILED = 8
    RESOURCE_LIMIT = 9  # the peer made us queue more than a link may hold (e.g. it never reads)
    RATE_LIMITED = 10  # the peer sent control frames (PING, OPEN, RECORDS) faster than allowed


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
}


class VX6Error(Exception):
    """Base of every error VX6 raises on purpose."""


class DecodeError(VX6Error):
    """Bytes from outside could not be parsed. Always the sender's fault."""


class RecordRejected(VX6Error):
    """A well-formed record failed the acceptance rules (signature, expiry, sequence)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CryptoError(VX6Error):
    """A signature, AEAD tag or handshake check failed."""


class LinkError(VX6Error):
    """A link must close; carries the code that goes out on the wire."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason


class IdentityMismatch(LinkError):
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
