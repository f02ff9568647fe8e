"""The client side of hidden services: from an alias to a joined path that carries streams.

Theory of operation. `path_for(alias key, profile)` hands out a live joined path to that
alias with room for another stream, or makes one:

1. The descriptor: the period's blinded key is computed from the alias (the client
   never asks anyone for it), both replicas are looked up, and the newest record signed
   by exactly that key is opened (core/hidden/descriptor.py). The result is cached
   until the record expires; a refused record is never cached. No record is
   NO_DESCRIPTOR, an allow-list descriptor without our entry NOT_AUTHORIZED.
2. `RendezvousAttempt` (core/hidden/client.py) decides the rest: three rendezvous
   candidates tried in order, the intros in order; this role builds the circuits it
   asks for (without AUTH: relays never learn who the client is), sends
   ESTABLISH_RENDEZVOUS and INTRODUCE1 (sealed to the intro's enc key, with the key
   proof when the service wants one), and feeds back what comes: circuits ready or
   lost, RENDEZVOUS_ESTABLISHED, INTRODUCE_ACK, RENDEZVOUS2. On RENDEZVOUS2 the
   handshake is finished and the end-to-end layer joined on: the rendezvous circuit is
   now the path. The intro circuit and the other candidates are closed.

Errors are StreamFailed with the four hidden-service codes, so `connect` and `nc` print
them as they print every other stream error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vx6.core.circuit.client import HopSpec
from vx6.core.circuit.session import CIRCUIT_MAX_STREAMS
from vx6.core.hidden.alias import encode_alias
from vx6.core.hidden.client import (
    BuildIntroCircuit,
    BuildRendezvousCircuit,
    CandidateFailed,
    CloseCircuit,
    Failed,
    IntroFailed,
    IntroTarget,
    Joined,
    RendezvousAttempt,
    SendEstablishRendezvous,
    SendIntroduce,
)
from vx6.core.hidden.profiles import PathProfile
from vx6.core.hidden.descriptor import blinded_key_for, open_descriptor_body, time_period
from vx6.core.routes import RelayCandidate
from vx6.crypto.hidden_desc import (
    e2e_crypto,
    hs_ntor_client_finish,
    seal_introduce,
    subcredential,
)
from vx6.crypto.keys import Identity, StaticKey
from vx6.errors import (
    CryptoError,
    DecodeError,
    DestroyReason,
    NotAuthorized,
    StreamError,
    StreamFailed,
    VX6Error,
)
from vx6.net.circuit import ClientPath
from vx6.net.ports import Clock, Count, Random, Spawn
from vx6.wire.cells import RelayCommand
from vx6.wire.hidden import (
    EstablishRendezvous,
    Introduce1,
    IntroducePlaintext,
    client_proof_signed_bytes,
    decode_introduce_ack,
    decode_rendezvous2,
    encode_establish_rendezvous,
    encode_introduce1,
    encode_introduce_plaintext,
)
from vx6.wire.hidden_desc import InnerPlaintext
from vx6.wire.records import Record

log = logging.getLogger("vx6.hidden")

ATTEMPT_DEADLINE = 45.0


class Builder(Protocol):
    async def build(
        self,
        owner: HopSpec,
        relays: list[HopSpec],
        *,
        authenticate: bool = True,
        on_control: Callable[[int, bytes], None] | None = None,
        accepts_streams: Callable[[ClientPath, int, str, int], None] | None = None,
    ) -> ClientPath: ...


class Relays(Protocol):
    def relay_candidates(self) -> list[RelayCandidate]: ...


class Descriptors(Protocol):
    async def fetch(self, blinded_key: bytes) -> list[Record]: ...


def hop(candidate: RelayCandidate) -> HopSpec:
    return HopSpec(candidate.identity, candidate.onion_key, candidate.endpoints)


@dataclass
class _Cached:
    contents: InnerPlaintext
    period: int
    blinded: bytes
    subcredential: bytes
    expires: float  # wall clock


@dataclass
class _Step:
    """The circuits and secrets of one attempt, by the core's step ids."""

    circuits: dict[int, ClientPath] = field(default_factory=dict)
    cookies: dict[int, bytes] = field(default_factory=dict)  # rendezvous step -> cookie
    # cookie -> (the intro it was introduced through, x): finishes the handshake
    introduced: dict[bytes, tuple[IntroTarget, bytes]] = field(default_factory=dict)


class HiddenClient:
    def __init__(
        self,
        identity: Identity,
        identity_seed: bytes,
        *,
        builder: Builder,
        relays: Relays,
        descriptors: Descriptors,
        clock: Clock,
        random: Random,
        spawn: Spawn,
        count: Count,
    ) -> None:
        self._identity = identity
        self._seed = identity_seed
        self._builder = builder
        self._relays = relays
        self._descriptors = descriptors
        self._clock = clock
        self._random = random
        self._spawn = spawn
        self._count = count
        self._cache: dict[bytes, _Cached] = {}
        self.paths: dict[tuple[bytes, PathProfile], list[ClientPath]] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ paths
    async def path_for(self, alias_key: bytes, profile: PathProfile) -> ClientPath:
        key = (alias_key, profile)
        live = [p for p in self.paths.get(key, []) if p.is_open]
        self.paths[key] = live
        roomy = [p for p in live if p.active_streams < CIRCUIT_MAX_STREAMS]
        if roomy:
            return min(roomy, key=lambda p: p.active_streams)
        path = await self.connect(alias_key, profile)
        self.paths.setdefault(key, []).append(path)
        return path

    async def connect(self, alias_key: bytes, profile: PathProfile) -> ClientPath:
        started = time.perf_counter()
        cached = await self._descriptor(alias_key)
        self.timings["lookup_ms"] = (time.perf_counter() - started) * 1e3
        intros = self._intro_targets(cached.contents)
        if not intros:
            raise StreamFailed(
                StreamError.INTROS_UNREACHABLE, "no intro relay of the descriptor is known"
            )
        attempt = RendezvousAttempt(
            profile,
            intros,
            self._relays.relay_candidates(),
            self._random,
            exclude=(self._identity.public,),
        )
        try:
            async with asyncio.timeout(ATTEMPT_DEADLINE):
                return await self._run(attempt, cached)
        except TimeoutError:
            raise StreamFailed(StreamError.RENDEZVOUS_FAILED, "no rendezvous in time") from None

    # ------------------------------------------------------------------ descriptor
    async def _descriptor(self, alias_key: bytes) -> _Cached:
        wall = self._clock.wall()
        period = time_period(wall)
        cached = self._cache.get(alias_key)
        if cached is not None and cached.period == period and cached.expires > wall:
            return cached
        blinded = blinded_key_for(alias_key, period)
        records = await self._descriptors.fetch(blinded)
        alias = encode_alias(alias_key)
        last_error: Exception | None = None
        for record in records:  # newest revision first
            try:
                contents = open_descriptor_body(
                    record.body, alias_key, period, record.seq, self._seed
                )
            except NotAuthorized:
                raise StreamFailed(
                    StreamError.NOT_AUTHORIZED,
                    f"{alias[:12]}...: the service's allow-list does not include this node",
                ) from None
            except (DecodeError, CryptoError) as exc:
                last_error = exc
                self._count("hidden_descriptors_refused")
                continue
            sub = subcredential(alias_key, blinded)
            fresh = _Cached(contents, period, blinded, sub, float(record.expires))
            self._cache[alias_key] = fresh
            return fresh
        detail = f"no descriptor for {alias[:12]}... in the DHT"
        if last_error is not None:
            detail += f" (refused: {last_error})"
        raise StreamFailed(StreamError.NO_DESCRIPTOR, detail)

    def _intro_targets(self, contents: InnerPlaintext) -> list[IntroTarget]:
        known = {r.identity: r for r in self._relays.relay_candidates()}
        out = []
        for entry in contents.intros:
            relay = known.get(entry.relay)
            if relay is not None:
                out.append(IntroTarget(relay, entry.auth_key, entry.enc_key))
        return out

    # ------------------------------------------------------------------ one attempt
    async def _run(self, attempt: RendezvousAttempt, cached: _Cached) -> ClientPath:
        done: asyncio.Future[ClientPath] = asyncio.get_running_loop().create_future()
        step = _Step()
        timer: asyncio.TimerHandle | None = None

        def carry_out(actions: Sequence[object]) -> None:
            nonlocal timer
            for action in actions:
                if isinstance(action, BuildRendezvousCircuit | BuildIntroCircuit):
                    self._spawn(build(action))
                elif isinstance(action, SendEstablishRendezvous):
                    circuit = step.circuits.get(action.step)
                    if circuit is not None:
                        data = encode_establish_rendezvous(EstablishRendezvous(action.cookie))
                        circuit.send_control(RelayCommand.ESTABLISH_RENDEZVOUS, data)
                elif isinstance(action, SendIntroduce):
                    introduce(action)
                elif isinstance(action, CloseCircuit):
                    gone = step.circuits.pop(action.step, None)
                    if gone is not None and not done.done():
                        gone.close(DestroyReason.NONE)
                elif isinstance(action, CandidateFailed):
                    log.warning(
                        "rendezvous candidate %d failed: %s", action.index + 1, action.reason
                    )
                    self._count("hidden_rendezvous_candidates_failed")
                elif isinstance(action, IntroFailed):
                    log.info("intro %d failed: %s", action.intro + 1, action.reason)
                    self._count("hidden_intros_failed")
                elif isinstance(action, Joined):
                    joined = step.circuits.pop(action.step, None)
                    if joined is not None and not done.done():
                        done.set_result(joined)
                elif isinstance(action, Failed) and not done.done():
                    done.set_exception(action.error())
            if timer is not None:
                timer.cancel()
            deadline = attempt.next_deadline()
            if deadline is not None and not done.done():
                delay = max(0.0, deadline - self._clock.monotonic())
                timer = asyncio.get_running_loop().call_later(
                    delay, lambda: carry_out(attempt.timer(self._clock.monotonic()))
                )

        async def build(action: BuildRendezvousCircuit | BuildIntroCircuit) -> None:
            def control(command: int, data: bytes) -> None:
                on_control(action.step, command, data)

            if isinstance(action, BuildRendezvousCircuit):
                step.cookies[action.step] = action.cookie

            path = list(action.path)
            try:
                circuit = await self._builder.build(
                    hop(path[-1]), [hop(r) for r in path[:-1]], authenticate=False, on_control=control
                )
            except (VX6Error, OSError):
                carry_out(attempt.circuit_failed(action.step, self._clock.monotonic()))
                return
            if done.done():
                circuit.close(DestroyReason.NONE)
                return
            step.circuits[action.step] = circuit
            circuit.on_closed = lambda _r: carry_out(
                attempt.circuit_failed(action.step, self._clock.monotonic())
            )
            now = self._clock.monotonic()
            if isinstance(action, BuildRendezvousCircuit):
                carry_out(attempt.rendezvous_circuit_ready(action.step, now))
            else:
                carry_out(attempt.intro_circuit_ready(action.step, now))

        def introduce(action: SendIntroduce) -> None:
            circuit = step.circuits.get(action.step)
            if circuit is None:
                return
            target = attempt.intros[action.intro]
            x_private = self._random(32)
            x_public = StaticKey(x_private).public
            rp = action.rendezvous
            proof = None
            if cached.contents.proof_required:
                signed = client_proof_signed_bytes(target.auth_key, x_public, action.cookie)
                proof = self._identity.sign(signed)
            plaintext = encode_introduce_plaintext(
                IntroducePlaintext(
                    action.cookie,
                    rp.identity,
                    rp.onion_key,
                    rp.endpoints,
                    self._identity.public if proof else None,
                    proof,
                )
            )
            _, sealed = seal_introduce(
                x_private, target.enc_key, target.auth_key, cached.subcredential, plaintext
            )
            step.introduced[action.cookie] = (target, x_private)
            data = encode_introduce1(Introduce1(target.auth_key, x_public, sealed))
            circuit.send_control(RelayCommand.INTRODUCE1, data)

        def on_control(circuit_id: int, command: int, data: bytes) -> None:
            now = self._clock.monotonic()
            try:
                if command == RelayCommand.RENDEZVOUS_ESTABLISHED:
                    carry_out(attempt.rendezvous_established(circuit_id, now))
                elif command == RelayCommand.INTRODUCE_ACK:
                    ack = decode_introduce_ack(data)
                    carry_out(attempt.introduce_ack(circuit_id, int(ack.status), now))
                elif command == RelayCommand.RENDEZVOUS2:
                    reply = decode_rendezvous2(data).reply
                    cookie = step.cookies.get(circuit_id, b"")
                    introduced = step.introduced.get(cookie)
                    circuit = step.circuits.get(circuit_id)
                    if introduced is None or circuit is None:
                        raise DecodeError("RENDEZVOUS2 on a circuit that did not introduce")
                    target, x_private = introduced
                    material = hs_ntor_client_finish(
                        target.auth_key, target.enc_key, x_private, reply
                    )
                    circuit.join(e2e_crypto(material, client=True))
                    carry_out(attempt.rendezvous2(circuit_id, now))
            except (DecodeError, CryptoError) as exc:
                log.warning("hidden service: bad answer on circuit %d: %s", circuit_id, exc)
                carry_out(attempt.circuit_failed(circuit_id, now))

        carry_out(attempt.start(self._clock.monotonic()))
        try:
            return await done
        finally:
            if timer is not None:
                timer.cancel()
            for circuit in step.circuits.values():
                circuit.on_closed = None
                circuit.close(DestroyReason.NONE)

    def describe(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for (alias_key, profile), paths in self.paths.items():
            out.append(
                {
                    "alias": encode_alias(alias_key),
                    "profile": str(profile),
                    "paths": [p.describe() for p in paths],
                    "timings": dict(self.timings),
                }
            )
        return out

    def close(self) -> None:
        for paths in self.paths.values():
            for path in paths:
                path.close(DestroyReason.NONE)
        self.paths.clear()
