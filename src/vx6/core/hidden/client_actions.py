"""What the hidden-service client core (client.py) is given and what it hands back.

Actions are orders to the adapter (build, send, close); `CandidateFailed` and
`IntroFailed` are events for the log; `Joined` and `Failed` end the attempt. A circuit
is named by a *step id*, an integer the core picks when it orders the build; every
input about that circuit carries it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from vx6.core.routes import RelayCandidate
from vx6.errors import StreamError, StreamFailed

INTRODUCE_SENT_ON = 0  # INTRODUCE_ACK statuses (docs/hidden.md section 4)
INTRODUCE_UNKNOWN_INTRO = 1
INTRODUCE_RATE_LIMITED = 2


@dataclass(frozen=True, slots=True)
class IntroTarget:
    """One intro point of the decrypted descriptor (docs/hidden.md section 3)."""

    relay: RelayCandidate  # the intro relay, from its node record
    auth_key: bytes  # the intro's Ed25519 key (INTRODUCE1's auth key)
    enc_key: bytes  # the intro's X25519 key (the introduction is sealed to it)


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    candidates: int = 3  # rendezvous points, tried in order
    join_timeout: float = 10.0  # RENDEZVOUS2 after INTRODUCE_ACK(0)
    build_timeout: float = 15.0  # each circuit build
    reply_timeout: float = 10.0  # RENDEZVOUS_ESTABLISHED, INTRODUCE_ACK
    cookie_lifetime: float = 30.0  # the RP drops a pending cookie this long after it
    deadline: float = 45.0  # the whole attempt
    grind_tries: int = 4096  # cookies drawn for one rendezvous side


# Orders


@dataclass(frozen=True, slots=True)
class BuildRendezvousCircuit:
    """Build a circuit along `path` (the client side, the RP last)."""

    step: int
    path: tuple[RelayCandidate, ...]
    cookie: bytes


@dataclass(frozen=True, slots=True)
class BuildIntroCircuit:
    """Build a circuit along `path` (relays, intro `intro`'s relay last)."""

    step: int
    path: tuple[RelayCandidate, ...]
    intro: int  # index into the attempt's intros


@dataclass(frozen=True, slots=True)
class SendEstablishRendezvous:
    step: int
    cookie: bytes


@dataclass(frozen=True, slots=True)
class SendIntroduce:
    """Send INTRODUCE1 on the intro circuit `step`: the adapter draws X and seals the
    plaintext (cookie, the RP's identity, onion key and endpoints) to the intro."""

    step: int
    intro: int
    rendezvous: RelayCandidate
    cookie: bytes


@dataclass(frozen=True, slots=True)
class CloseCircuit:
    step: int
    reason: str


# Log events


@dataclass(frozen=True, slots=True)
class CandidateFailed:
    index: int  # 0-based rendezvous candidate
    reason: str


@dataclass(frozen=True, slots=True)
class IntroFailed:
    intro: int
    reason: str


# Ends


@dataclass(frozen=True, slots=True)
class Joined:
    """RENDEZVOUS2 arrived on the rendezvous circuit `step`: finish the handshake of
    the introduction sent through `intro` and carry streams on it."""

    step: int
    intro: int


@dataclass(frozen=True, slots=True)
class Failed:
    code: StreamError
    detail: str

    def error(self) -> StreamFailed:
        return StreamFailed(self.code, self.detail)


ClientAction = (
    BuildRendezvousCircuit
    | BuildIntroCircuit
    | SendEstablishRendezvous
    | SendIntroduce
    | CloseCircuit
    | CandidateFailed
    | IntroFailed
    | Joined
    | Failed
)
