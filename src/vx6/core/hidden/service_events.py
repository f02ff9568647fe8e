"""What the hidden service's core is configured with and what it hands its adapter.

The events are frozen dataclasses named in the past tense, like the circuit cores' (an
`...Requested` event asks the adapter to do something, as ExtendRequested does): the
adapter builds the circuits, runs ESTABLISH_INTRO and RENDEZVOUS1, signs and stores the
descriptor, and reports back through the core's input methods with the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from vx6.core.hidden.guards import GuardsChanged
from vx6.core.routes import RelayCandidate
from vx6.errors import UsageError


class Profile(Enum):
    """How many relays each side of a rendezvous uses (docs/hidden.md section 6)."""

    FAST = 3
    BALANCED = 5

    @property
    def side_relays(self) -> int:
        return self.value


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    active: int = 3  # intros published in the descriptor (1..3 fit one)
    standby: int = 2  # established and registered, not published
    max_rendezvous_builds: int = 16  # rendezvous circuits being built at once
    cookie_memory: float = 120.0  # seconds a used rendezvous cookie is remembered
    max_cookies: int = 8192
    intro_lifetime_min: float = 18 * 3600.0  # an intro's lifetime is drawn in this range
    intro_lifetime_max: float = 24 * 3600.0
    intro_introductions_min: int = 16384  # ... and its introductions cap in this one
    intro_introductions_max: int = 32768
    retired_grace: float = 600.0  # a retired intro stays registered this long
    max_retired: int = 10  # more retired intros at once close the oldest early
    republish_deadline: float = 10.0  # a change to the active intros is published within
    # this; also the retry delay after a publish that no node stored
    descriptor_lifetime: float = 3 * 3600.0
    republish_interval: float = 3600.0
    no_route_retry: float = 30.0  # too few relays for a path: try again this much later

    def __post_init__(self) -> None:
        if not 1 <= self.active <= 3 or self.standby < 0:
            raise UsageError("a descriptor holds 1..3 intros; standby must be >= 0")
        if not 0 < self.intro_lifetime_min <= self.intro_lifetime_max:
            raise UsageError("need 0 < intro_lifetime_min <= intro_lifetime_max")
        if not 0 < self.intro_introductions_min <= self.intro_introductions_max:
            raise UsageError("need 0 < intro_introductions_min <= intro_introductions_max")
        if not 0 < self.republish_interval < self.descriptor_lifetime:
            raise UsageError("republish_interval must be below descriptor_lifetime")
        if self.max_rendezvous_builds < 1 or self.max_cookies < 1 or self.max_retired < 1:
            raise UsageError("max_rendezvous_builds, max_cookies and max_retired must be >= 1")


@dataclass(frozen=True, slots=True)
class IntroBuildRequested:
    """Build a circuit along `path` (guard first, the intro relay last) and register an
    intro there with the keys derived from the seeds (auth: Ed25519, enc: X25519).
    Answer with `intro_established` or `intro_failed`."""

    intro_id: int
    path: tuple[RelayCandidate, ...]
    auth_seed: bytes
    enc_seed: bytes


@dataclass(frozen=True, slots=True)
class IntroCloseRequested:
    """The intro is no longer wanted: destroy its circuit (its registration goes with it)."""

    intro_id: int


@dataclass(frozen=True, slots=True)
class DescriptorPublishRequested:
    """Sign and store a descriptor with this revision listing these intros, in order;
    answer with `descriptor_published`. Save `revision` (the next start's
    `last_revision`)."""

    revision: int
    intros: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RendezvousBuildRequested:
    """Build a circuit along `path` (guard first, the rendezvous point last), answer the
    client's X with RENDEZVOUS1 for `cookie`; then `rendezvous_done`."""

    build_id: int
    path: tuple[RelayCandidate, ...]
    intro_id: int
    client_key_x: bytes
    cookie: bytes


ServiceEvent = (
    IntroBuildRequested
    | IntroCloseRequested
    | DescriptorPublishRequested
    | RendezvousBuildRequested
    | GuardsChanged
)


class Refusal(Enum):
    """Why an introduction was refused; each value is its counter's name."""

    UNKNOWN_INTRO = "refused_unknown_intro"  # not one of ours, or not established
    REPLAY = "refused_replay"  # the same X on the same intro
    INTRO_EXHAUSTED = "refused_intro_exhausted"  # its replay cache is full
    COOKIE_REUSED = "refused_cookie_reused"
    COOKIE_MEMORY_FULL = "refused_cookie_memory_full"
    BAD_PROOF = "refused_bad_proof"
    NOT_ALLOWED = "refused_not_allowed"
    BUILDS_FULL = "refused_builds_full"  # max_rendezvous_builds already under way
    NO_ROUTE = "refused_no_route"  # no guard or too few service-half relays


@dataclass(frozen=True, slots=True)
class Verdict:
    """An introduction's outcome: `refusal` None means accepted, and `events` then holds
    the RendezvousBuildRequested (and anything else the introduction set off, such as
    an intro's replacement once it reached its cap)."""

    refusal: Refusal | None
    events: tuple[ServiceEvent, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.refusal is None
