"""The service side of one hidden service: intros, descriptors, rendezvous, streams.

Theory of operation. `HiddenServiceCore` (core/hidden/service.py) decides everything:
which intros to build through which guard, when to publish which descriptor revision,
which introductions to answer. This role carries its actions out and feeds it what
happened:

* BuildIntro: a circuit (guard first, the intro relay last) built without AUTH, then
  ESTABLISH_INTRO signed by the intro's own auth key over the circuit binding it shares
  with the intro relay; INTRO_ESTABLISHED makes the intro usable, the circuit's end
  makes it failed (a first hop that never answered blames the guard).
* INTRODUCE2 on an intro circuit: opened with the intro's enc key (under the
  subcredential of the current period, or of its neighbour near a period change), the
  client's key proof checked, then handed to the core, which refuses replays, reused
  cookies, strangers and builds over the cap.
* BuildRendezvous: a circuit to the client's rendezvous point (guard first, middles from
  the service's half), RENDEZVOUS1 with the handshake reply, and the end-to-end layer
  joined on: the client's streams then arrive here (`accepts_streams`) and go to the
  service's target through the node's owner streams (one budget for every service).
* PublishDescriptor: the descriptor sealed for each period that needs one, signed by
  that period's blinded key, stored on both replicas, then fetched back: only a
  descriptor read back from the DHT makes the service *reachable*. Both go through a
  directory proxy at the end of a guard-first circuit (node/hidden_dir_circuit.py), so
  no storer sees this node's address next to the blinded key.

All timing comes from the core's `next_deadline`, on the node's clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from vx6.core.hidden.alias import encode_alias
from vx6.core.hidden.descriptor import (
    DESCRIPTOR_LIFETIME,
    PERIOD_LENGTH,
    publish_periods,
    seal_descriptor_body,
    time_period,
)
from vx6.core.hidden.guards import GuardsChanged
from vx6.core.hidden.service import HiddenServiceCore
from vx6.core.hidden.service_events import (
    DescriptorPublishRequested,
    IntroBuildRequested,
    IntroCloseRequested,
    RendezvousBuildRequested,
    ServiceEvent,
)
from vx6.core.records import make_record
from vx6.core.routes import RelayCandidate
from vx6.crypto.hidden import AliasKey
from vx6.crypto.hidden_desc import e2e_crypto, hs_ntor_service, open_introduce, subcredential
from vx6.crypto.keys import Identity, StaticKey, key_to_text, verify
from vx6.errors import CryptoError, DecodeError, DestroyReason, StreamFailed, VX6Error
from vx6.net.circuit import ClientPath
from vx6.net.ports import Clock, Count, Random, Spawn
from vx6.net.ratelog import RATELOG
from vx6.node.hidden_ports import Builder, DescriptorStore, Relays, hop
from vx6.node.owner_streams import OwnerStreams
from vx6.store.config import ServiceConfig
from vx6.store.hidden_config import HiddenServiceConfig
from vx6.wire.cells import RelayCommand
from vx6.wire.frames import OPEN_FLAG_PROBE
from vx6.wire.hidden import (
    EstablishIntro,
    Rendezvous1,
    client_proof_signed_bytes,
    decode_introduce1,
    decode_introduce_plaintext,
    encode_establish_intro,
    encode_rendezvous1,
    establish_intro_signed_bytes,
)
from vx6.wire.hidden_desc import InnerPlaintext, IntroEntry
from vx6.wire.records import HiddenDescriptorBody

log = logging.getLogger("vx6.hidden")

TARGET_CONNECT_TIMEOUT = 10.0


class _Intro:
    """One intro as this role holds it: its keys, relay and circuit."""

    def __init__(self, action: IntroBuildRequested) -> None:
        self.id = action.intro_id
        self.relay = action.path[-1]
        self.auth = Identity(action.auth_seed)
        self.enc = StaticKey(action.enc_seed)
        self.path: ClientPath | None = None


class HiddenServiceHost:
    def __init__(
        self,
        config: HiddenServiceConfig,
        core: HiddenServiceCore,
        alias_seed: bytes,
        allowed: Callable[[], frozenset[bytes]],
        *,
        last_revision: int,
        builder: Builder,
        relays: Relays,
        descriptors: DescriptorStore,
        streams: OwnerStreams,
        save_state: Callable[[GuardsChanged | None, int | None, float | None], None],
        clock: Clock,
        random: Random,
        spawn: Spawn,
        count: Count,
    ) -> None:
        self.config = config
        self.core = core
        self.alias_key = AliasKey(alias_seed)
        self.alias = encode_alias(self.alias_key.public)
        self._allowed = allowed
        self._builder = builder
        self._relays = relays
        self._descriptors = descriptors
        self._streams = streams
        self._save_state = save_state
        self._last_revision = last_revision
        self._clock = clock
        self._random = random
        self._spawn = spawn
        self._count = count
        self._intros: dict[int, _Intro] = {}
        self._joined: set[ClientPath] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._target = ServiceConfig(
            config.name, config.target_host, config.target_port, public=True
        )
        self.closed = False
        self._published_wall: float | None = None

    # ------------------------------------------------------------------ driving the core
    def start(self) -> None:
        events = self.core.start(
            self._clock.monotonic(),
            self._relays.relay_candidates(),
            wall=self._clock.wall(),
            last_revision=self._last_revision,
        )
        self._carry_out(events)

    def _carry_out(self, actions: Sequence[ServiceEvent]) -> None:
        if self.closed:
            return
        for action in actions:
            if isinstance(action, IntroBuildRequested):
                intro = self._intros[action.intro_id] = _Intro(action)
                self._spawn(self._build_intro(intro, action.path))
            elif isinstance(action, IntroCloseRequested):
                gone = self._intros.pop(action.intro_id, None)
                if gone is not None and gone.path is not None:
                    gone.path.close(DestroyReason.NONE)
            elif isinstance(action, DescriptorPublishRequested):
                self._save_state(None, action.revision, None)
                self._spawn(self._publish(action.revision, action.intros))
            elif isinstance(action, RendezvousBuildRequested):
                self._spawn(self._rendezvous(action))
            elif isinstance(action, GuardsChanged):
                self._save_state(action, None, None)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is None or self.closed:
            return
        delay = max(0.0, deadline - self._clock.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now, wall = self._clock.monotonic(), self._clock.wall()
        self._carry_out(self.core.relays_known(self._relays.relay_candidates(), now, wall=wall))

    # ------------------------------------------------------------------ intros
    async def _build_intro(self, intro: _Intro, path: Sequence[RelayCandidate]) -> None:
        def control(command: int, data: bytes) -> None:
            self._intro_control(intro, command, data)

        try:
            circuit = await self._builder.build(
                hop(path[-1]), [hop(r) for r in path[:-1]], authenticate=False, on_control=control
            )
        except StreamFailed as exc:
            first_hop = getattr(exc, "hops_keyed", 1) == 0
            self._intro_failed(intro, f"build failed: {exc}", first_hop)
            return
        if intro.id not in self._intros:
            circuit.close(DestroyReason.NONE)  # retired while it was being built
            return
        intro.path = circuit
        # A lost link to hop 1 is the guard's failure (docs/hidden.md section 6): down at
        # once, not only after a rebuild through it failed (that took ~20 s on loopback).
        circuit.on_closed = lambda reason: self._intro_failed(
            intro, reason, circuit.link.closed_future.done()
        )
        rate, burst = self.config.intro_rate, self.config.intro_burst
        signed = establish_intro_signed_bytes(
            circuit.core.exit_binding, intro.auth.public, rate, burst
        )
        message = EstablishIntro(intro.auth.public, rate, burst, intro.auth.sign(signed))
        circuit.send_control(RelayCommand.ESTABLISH_INTRO, encode_establish_intro(message))

    def _intro_failed(self, intro: _Intro, reason: str, first_hop: bool) -> None:
        if self._intros.get(intro.id) is not intro:
            return
        log.info("%s: intro %d failed: %s", self.config.name, intro.id, reason)
        now = self._clock.monotonic()
        self._carry_out(self.core.intro_failed(intro.id, now, first_hop_failed=first_hop))

    def _intro_control(self, intro: _Intro, command: int, data: bytes) -> None:
        now = self._clock.monotonic()
        if command == RelayCommand.INTRO_ESTABLISHED:
            self._carry_out(self.core.intro_established(intro.id, now))
        elif command == RelayCommand.INTRODUCE2:
            self._introduction(intro, data)
        else:
            self._count("hidden_unexpected_commands")

    def _introduction(self, intro: _Intro, data: bytes) -> None:
        try:
            message = decode_introduce1(data)
            plaintext = None
            for sub in self._subcredentials():
                try:
                    plaintext = open_introduce(
                        intro.enc.private_bytes(),
                        intro.auth.public,
                        message.client_key,
                        message.ciphertext,
                        sub,
                    )
                    break
                except CryptoError:
                    continue
            if plaintext is None:
                raise CryptoError("the introduction does not open")
            fields = decode_introduce_plaintext(plaintext)
        except (DecodeError, CryptoError) as exc:
            self._count("hidden_introductions_malformed")
            RATELOG.warning(
                log, "hidden-bad-introduction", "%s: bad introduction: %s", self.config.name, exc
            )
            return
        proof_ok = False
        client = fields.client_identity
        if client is not None and fields.client_signature is not None:
            signed = client_proof_signed_bytes(intro.auth.public, message.client_key, fields.cookie)
            proof_ok = verify(client, signed, fields.client_signature)
        rendezvous = RelayCandidate(
            fields.rendezvous_identity, fields.rendezvous_onion_key, fields.endpoints, None
        )
        verdict = self.core.introduction(
            intro.id,
            message.client_key,
            fields.cookie,
            client if proof_ok else None,
            proof_ok or client is None,
            rendezvous,
            self._clock.monotonic(),
        )
        if verdict.refusal is not None:
            RATELOG.info(
                log,
                "hidden-introduction-refused",
                "%s: introduction refused: %s",
                self.config.name,
                verdict.refusal.value,
            )
        self._carry_out(verdict.events)

    def _subcredentials(self) -> list[bytes]:
        wall = self._clock.wall()
        out = []
        for period in publish_periods(wall, include_previous=True):
            blinded = self.alias_key.blinded(period, PERIOD_LENGTH)
            out.append(subcredential(self.alias_key.public, blinded.public))
        return out

    # ------------------------------------------------------------------ rendezvous
    async def _rendezvous(self, action: RendezvousBuildRequested) -> None:
        intro = self._intros.get(action.intro_id)
        ok = False
        first_hop = False
        try:
            if intro is None:
                return
            circuit = await self._builder.build(
                hop(action.path[-1]),
                [hop(r) for r in action.path[:-1]],
                authenticate=False,
                accepts_streams=self._stream_requested,
            )
            reply, material = hs_ntor_service(
                intro.auth.public, intro.enc, action.client_key_x, self._random(32)
            )
            circuit.send_control(
                RelayCommand.RENDEZVOUS1, encode_rendezvous1(Rendezvous1(action.cookie, reply))
            )
            circuit.join(e2e_crypto(material, client=False))
            self._joined.add(circuit)
            circuit.on_closed = lambda _reason: self._joined.discard(circuit)
            ok = True
        except (VX6Error, OSError) as exc:
            first_hop = getattr(exc, "hops_keyed", 1) == 0
            log.info("%s: rendezvous build failed: %s", self.config.name, exc)
        finally:
            now = self._clock.monotonic()
            done = self.core.rendezvous_done(action.build_id, ok, now, first_hop_failed=first_hop)
            self._carry_out(done)

    def _stream_requested(self, path: ClientPath, sid: int, service: str, flags: int) -> None:
        self._count("hidden_streams")
        probe = bool(flags & OPEN_FLAG_PROBE)
        self._streams.open(path, sid, self._target, probe, TARGET_CONNECT_TIMEOUT)

    # ------------------------------------------------------------------ descriptors
    async def _publish(self, revision: int, intro_ids: Sequence[int]) -> None:
        intros = [self._intros[i] for i in intro_ids if i in self._intros]
        if not intros:
            return
        contents = InnerPlaintext(
            tuple(IntroEntry(i.relay.identity, i.auth.public, i.enc.public) for i in intros),
            proof_required=not self.config.public,
        )
        clients = sorted(self._allowed()) if not self.config.public else []
        wall = self._clock.wall()
        stored_total = 0
        blinded_keys = []
        for period in publish_periods(wall):
            blinded = self.alias_key.blinded(period, PERIOD_LENGTH)
            body = seal_descriptor_body(
                self.alias_key, period, revision, contents, clients, self._random
            )
            _, raw = make_record(
                blinded, HiddenDescriptorBody(body), revision, wall, DESCRIPTOR_LIFETIME
            )
            stored_total += await self._descriptors.publish(raw)
            blinded_keys.append(blinded.public)
        now = self._clock.monotonic()
        self._carry_out(self.core.descriptor_published(revision, stored_total, now))
        self._save_state(None, None, wall)
        self._published_wall = wall
        # Reachable only once the DHT gives the descriptor back to a lookup.
        current = self.alias_key.blinded(time_period(wall), PERIOD_LENGTH).public
        for record in await self._descriptors.fetch(current):
            if record.seq >= revision:
                self._carry_out(
                    self.core.descriptor_fetched_back(revision, self._clock.monotonic())
                )
                break

    # ------------------------------------------------------------------ the rest
    def describe(self) -> dict[str, object]:
        """One service for the `hidden` control op (docs/hidden.md, "CLI and config")."""
        core = self.core.describe()
        intros = [
            {
                "relay": key_to_text(bytes.fromhex(str(i["relay"]))),
                # a building intro is a standby once established (was "none": no role)
                "role": "standby" if i["state"] == "building" else str(i["state"]),
                "state": "building" if i["state"] == "building" else "established",
                "introductions": i["introductions"],
            }
            for i in core["intros"]
        ]
        guards = [
            {"identity": key_to_text(bytes.fromhex(str(g["identity"]))),
             "state": "up" if g["up"] else "down"}
            for g in core["guards"]
        ]  # fmt: skip
        return {
            "name": self.config.name,
            "alias": self.alias,
            "profile": self.config.profile,
            "reachable": core["reachable"],
            "revision": core["revision"],
            "published_at": self._published_wall,
            "intros": intros,
            "guards": guards,
            "shared_guard_rendezvous": self.core.counts["guard_in_client_half"],
            "joined_paths": len(self._joined),
            "counts": dict(self.core.counts),
        }

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._descriptors.close()
        for intro in self._intros.values():
            if intro.path is not None:
                intro.path.close(DestroyReason.NONE)
        for path in list(self._joined):
            path.close(DestroyReason.NONE)
        self._intros.clear()
        self._joined.clear()
