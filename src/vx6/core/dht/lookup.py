"""One parallel iterative Kademlia lookup, as a pure state machine.

Theory of operation: the lookup keeps every candidate it has heard of, ordered by XOR
distance to the target. Its *window* is the k closest candidates still worth asking:
not failed, at most `cap` per IPv6 /48 or IPv4 /24 and at most `cap` asked from each
such block per lookup (nodes from one address block, ground close to a key, can neither
fill the window nor take turns in it), at most MAX_UNASKED_PER_REFERRER unasked ones
named only by the same answer (one liar's fake "closer" contacts cannot crowd out
everyone else's), and none named only by discredited referrers (whose referrals failed
DISCREDIT_AFTER times and more often than they answered). The owner (the DHT node) asks
`next_requests` which candidates to query: the closest unasked window members, while
fewer than `alpha` requests are in flight (alpha is higher when a user is waiting).
Answers come back through `answered_nodes` / `answered_values`; timeouts and answers
from the wrong key through `failed`. Candidates learnt from an answer are one round
deeper than the node that named them; `rounds` is the depth of the answer that
settled the lookup.

A node lookup ends when every window member has answered. A value lookup also returns
early (`found` becomes true) as soon as one valid record at least as new as the local
one is held. It then goes on for one more round in the background, at
`background_alpha`, until `background_answers` more nodes have answered (timeouts do
not count, so fake contacts cannot use the round up) or the window is exhausted; this
is what finds a newer record when the first one came from a stale holder or a replay.
`corrections` then lists the STOREs that bring holders up to date: holders that
returned an older record than the newest seen, then the closest window members that
returned none. Records are checked by the node (it knows what is held locally) before
they reach the lookup.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from enum import Enum

from vx6.core.dht.contacts import Contact, prefix_of
from vx6.core.dht.values import Checked, Held, Outcome
from vx6.core.records import RecordSlot

MAX_REFERRERS = 4
MAX_UNASKED_PER_REFERRER = 4  # window slots one answer's unasked contacts may hold
DISCREDIT_AFTER = 3  # failed referrals, outnumbering answered ones, before we stop listening


class State(Enum):
    NEW = "new"
    ASKED = "asked"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(slots=True)
class Candidate:
    contact: Contact
    depth: int
    state: State = State.NEW
    token: bytes | None = None
    returned: dict[RecordSlot, int] = field(default_factory=dict)  # slot -> seq it holds
    referrers: list[bytes] = field(default_factory=list)  # who named it (first few)


class Lookup:
    def __init__(
        self,
        lookup_id: int,
        target: bytes,
        initial: list[Contact],
        *,
        k: int,
        alpha: int,
        cap: int,
        want_value: bool,
        held: dict[RecordSlot, Held],
        own_id: bytes,
        background_answers: int = 0,
        background_alpha: int = 0,
    ) -> None:
        self.lookup_id = lookup_id
        self.target = target
        self.target_int = int.from_bytes(target, "big")
        self.want_value = want_value
        self.k, self.alpha, self.cap = k, alpha, cap
        self.background_answers = background_answers or k
        self.background_alpha = background_alpha or alpha
        self.held = held  # newest valid record per slot: local ones, then what we learn
        self.records: dict[RecordSlot, bytes] = {}  # valid records seen during the lookup
        self.candidates: dict[bytes, Candidate] = {}
        self._order: list[tuple[int, bytes]] = []
        self._own_id = own_id
        self.in_flight = 0
        self.rpcs = 0
        self.found = False
        self.found_rounds = 0
        self.found_rpcs = 0
        self._extra_budget = 0
        self._max_depth_answered = 0
        self._referrals: dict[bytes, list[int]] = {}  # referrer -> [answered, failed]
        self._window: list[Candidate] | None = None
        self._asked_in: dict[bytes, int] = {}  # prefix -> candidates asked from it
        for contact in initial:
            self._add(contact, 1, None)

    # --- candidates -------------------------------------------------------------------

    def _add(self, contact: Contact, depth: int, referrer: bytes | None) -> None:
        if contact.node_id == self._own_id:
            return
        known = self.candidates.get(contact.node_id)
        if known is None:
            known = self.candidates[contact.node_id] = Candidate(contact, depth)
            insort(self._order, (contact.id_int ^ self.target_int, contact.node_id))
            self._window = None
        else:
            known.depth = min(known.depth, depth)
        referrers = known.referrers
        if referrer is not None and len(referrers) < MAX_REFERRERS and referrer not in referrers:
            referrers.append(referrer)

    def _discredited(self, cand: Candidate) -> bool:
        """True for an unasked candidate named only by nodes whose referrals mostly fail:
        a liar's fake contacts stop costing timeouts after its first few."""
        if cand.state is not State.NEW or not cand.referrers:
            return False
        for referrer in cand.referrers:
            answered, failed = self._referrals.get(referrer, (0, 0))
            if failed < DISCREDIT_AFTER or failed <= answered:
                return False
        return True

    def _count_referral(self, cand: Candidate, answered: bool) -> None:
        for referrer in cand.referrers:
            tally = self._referrals.setdefault(referrer, [0, 0])
            tally[0 if answered else 1] += 1
        if not answered:
            self._window = None

    def window(self) -> list[Candidate]:
        """The k closest candidates that have not failed (nor come only from discredited
        referrers), at most `cap` per prefix."""
        if self._window is not None:
            return self._window
        chosen: list[Candidate] = []
        per_prefix: dict[bytes, int] = {}
        unasked_from: dict[bytes, int] = {}
        for _, node_id in self._order:
            cand = self.candidates[node_id]
            if cand.state is State.FAILED or self._discredited(cand):
                continue
            if cand.state is State.NEW and len(cand.referrers) == 1:
                referrer = cand.referrers[0]
                named = unasked_from.get(referrer, 0)
                if named >= MAX_UNASKED_PER_REFERRER:
                    continue
                unasked_from[referrer] = named + 1
            if self.cap > 0:
                prefix = prefix_of(cand.contact.address[0])
                if prefix is not None:
                    seen = per_prefix.get(prefix, 0)
                    if seen >= self.cap:
                        continue
                    if cand.state is State.NEW and self._asked_in.get(prefix, 0) >= self.cap:
                        continue  # this block has had its turn; a closer id from it waits
                    per_prefix[prefix] = seen + 1
            chosen.append(cand)
            if len(chosen) >= self.k:
                break
        self._window = chosen
        return chosen

    # --- driving ----------------------------------------------------------------------

    def next_requests(self) -> list[Contact]:
        """Candidates to query now; they are marked as asked."""
        if self.finished:
            return []
        room = self.alpha - self.in_flight
        if self.found:
            # Background: never more in flight than answers still wanted.
            room = min(self.background_alpha, self._extra_budget) - self.in_flight
        if room <= 0:
            return []
        out: list[Contact] = []
        for cand in self.window():
            if cand.state is State.NEW:
                cand.state = State.ASKED
                out.append(cand.contact)
                prefix = prefix_of(cand.contact.address[0])
                if prefix is not None:
                    self._asked_in[prefix] = self._asked_in.get(prefix, 0) + 1
                if len(out) >= room:
                    break
        if out:
            self._window = None  # asked candidates no longer count against their referrer
        self.in_flight += len(out)
        self.rpcs += len(out)
        return out

    def _settle(self, node_id: bytes) -> Candidate | None:
        cand = self.candidates.get(node_id)
        if cand is None or cand.state is not State.ASKED:
            return None
        self.in_flight -= 1
        return cand

    def failed(self, node_id: bytes) -> None:
        cand = self._settle(node_id)
        if cand is not None:
            cand.state = State.FAILED
            self._window = None
            self._count_referral(cand, answered=False)

    def _answered(self, cand: Candidate, token: bytes) -> None:
        cand.state, cand.token = State.ANSWERED, token
        self._count_referral(cand, answered=True)
        self._max_depth_answered = max(self._max_depth_answered, cand.depth)
        if self.found:
            self._extra_budget -= 1

    def answered_nodes(self, node_id: bytes, contacts: list[Contact], token: bytes) -> None:
        cand = self._settle(node_id)
        if cand is None:
            return
        self._answered(cand, token)
        for contact in contacts:
            self._add(contact, cand.depth + 1, node_id)

    def answered_values(
        self, node_id: bytes, checked: list[tuple[bytes, Checked]], token: bytes
    ) -> None:
        """`checked` pairs each returned record with the node's verdict on it."""
        cand = self._settle(node_id)
        if cand is None:
            return
        self._answered(cand, token)
        good = False
        for raw, verdict in checked:
            record, slot = verdict.record, verdict.slot
            if record is None or slot is None:
                continue
            if verdict.outcome is Outcome.STALE:
                cand.returned[slot] = record.seq
            elif verdict.acceptable:
                good = True
                cand.returned[slot] = record.seq
                self.records[slot] = raw
                if verdict.outcome is Outcome.NEW:
                    self.held[slot] = Held(raw, record, 0.0)
        if good and not self.found:
            self.found = True
            self.found_rounds = cand.depth
            self.found_rpcs = self.rpcs
            self._extra_budget = self.background_answers

    @property
    def finished(self) -> bool:
        if self.in_flight > 0:
            return False
        if self.found and self._extra_budget <= 0:
            return True
        return not any(c.state is State.NEW for c in self.window())

    @property
    def rounds(self) -> int:
        return self.found_rounds if self.found else self._max_depth_answered

    def closest_answered(self) -> list[Candidate]:
        return [c for c in self.window() if c.state is State.ANSWERED]

    def corrections(self, limit: int) -> list[tuple[Contact, bytes, bytes]]:
        """(holder, token, record) STOREs that bring holders up to date: first those that
        returned an older record than the newest we saw, then the closest window members
        that returned none."""
        if not self.records:
            return []
        newest = {slot: self.held[slot].record.seq for slot in self.records}

        def behind(cand: Candidate) -> bool:
            return any(cand.returned.get(slot, seq) < seq for slot, seq in newest.items())

        answered = [c for c in self.candidates.values() if c.token is not None]
        stale = [c for c in answered if c.returned and behind(c)]
        empty = [c for c in self.closest_answered() if not c.returned]
        out: list[tuple[Contact, bytes, bytes]] = []
        for cand in stale + empty:
            assert cand.token is not None
            for slot, raw in self.records.items():
                if cand.returned.get(slot, -1) < newest[slot]:
                    out.append((cand.contact, cand.token, raw))
                    if len(out) >= limit:
                        return out
        return out
