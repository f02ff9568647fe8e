"""The targets of bench_hostile.py rows judged by the victim's own counters.

Theory of operation. For these rows the benchmark reads the victim's `vx6 status` just
before the window and just after it (never during: a stalled victim would stall the
measurement); `status_figures` turns the two into the counters the window added and what the
victim holds after, and `status_checks` judges them with the attacker's own counters. The
bounds are the documented ones (docs/security.md), written out here rather than read
from the code under test, so a changed constant shows as a missed target.

* relay-directory-flood (17): at most DIRECTORY_SLOTS entries under any directory key
  (the victim's status, and the STOREs the attacker saw accepted), the bound reached (the
  attacker got "full" refusals: otherwise the row proves nothing), no record listing an
  address the STORE did not come from stored, each counted by the victim, and the
  victim's own (honest) entry still handed out to a directory lookup.
* allow-nudge (18): nudges at most one per NUDGE_EVERY seconds of the window and at
  least one (the attack reached the nudge), the chase's DHT lookups in the window
  (`allow_names_lookups`) at most the nudges plus what the chase does unnudged
  (QUIET_CHASE; `dht_lookups`, which also counts the relay directory's rounds, is
  shown, not judged), and every stream refused with NOT_ALLOWED, none opened, each
  counted by the victim.
"""

from __future__ import annotations

from typing import Any

from vx6.app.localnet import LocalNode

DIRECTORY_SLOTS = 16  # entries per directory key at one holder
NUDGE_EVERY = 10.0  # seconds between nudges of the allow-list name chase
# Lookups the chase of `nobody-yet` makes anyway, unnudged: it backs off from 2 s,
# doubling (t = 0, 2, 6, 14, 30, 62 s), so at most 6 in any window under a minute.
QUIET_CHASE = 6

Status = dict[str, Any]  # a `vx6 status` reply

COUNTERS = {
    "relay-directory-flood": (
        "dht_refused_not-from-listed-address",
        "dht_refused_full",
        "dht_values_stored",
    ),
    "allow-nudge": (
        "allow_names_nudged",
        "allow_names_lookups",
        "dht_lookups",
        "streams_refused_not_allowed",
    ),
}


# The hidden relay role's bounds (docs/hidden.md section 7), rows 19-21: judged from what
# the attacker saw and the victim's `hidden_relay` counters, read by the attacker from
# the victim's control socket while it still held its circuits.
INTRO_PER_SOURCE = 64
INTRO_PER_NODE = 1024
COOKIES_PER_SOURCE = 256
COOKIES_PER_NODE = 4096
HIDDEN_ROWS = (
    "intro-registrations",
    "rendezvous-cookies",
    "intro-flood",
    "descriptor-storage",
    "introduction-replay",
)
MAX_RENDEZVOUS_BUILDS = 16  # a service's rendezvous circuits under way at once
# What the victim answers each bad descriptor (descriptor-storage), and the counter of it.
DESCRIPTOR_REFUSALS = {
    "tampered": "bad-signature",
    "older": "stale-sequence",
    "wrong-key": "wrong-key",
    "foreign-under-key": "wrong-key",
}


def replay_checks(a: dict[str, Any], params: dict[str, Any]) -> dict[str, bool]:
    replay = a.get("replay_phase") or {}
    flood = a.get("flood_phase") or {}
    under_way = a.get("builds_under_way_after_flood")
    judged = sum(v for k, v in flood.items() if k.startswith("refused_"))
    return {
        "replays refused": replay.get("refused_replay") == params["replays"]
        and replay.get("refused_cookie_reused") == params["reuses"]
        and replay.get("rendezvous_builds", 0) == 0,
        "builds cap": under_way is not None
        and under_way <= MAX_RENDEZVOUS_BUILDS
        and flood.get("refused_builds_full", 0) > 0
        and judged + flood.get("rendezvous_builds", 0) == params["flood"],
        "intro passed": set(a.get("acks", {})) == {"SENT_ON"},
    }


def descriptor_checks(a: dict[str, Any]) -> dict[str, bool]:
    added = a.get("victim_dht_added") or {}
    answers = a["answers"]
    refused = all(
        set(answers[kind]) == {f"REFUSED:{reason}"} for kind, reason in DESCRIPTOR_REFUSALS.items()
    )
    expected: dict[str, int] = {"malformed": answers["oversized"].get("sent", 0)}
    for kind, reason in DESCRIPTOR_REFUSALS.items():
        key = f"refused:{reason}"
        expected[key] = expected.get(key, 0) + sum(answers[kind].values())
    return {
        "descriptors refused": refused and set(answers["oversized"]) == {"sent"},
        "descriptors counted": all(added.get(k, 0) == n for k, n in expected.items())
        and added.get("stored", 0) == len(a["honest_stored"]),
        "honest descriptor served": a["honest_stored"] == ["OK", "OK"] and all(a["served_honest"]),
    }


def hidden_checks(row: dict[str, Any], params: dict[str, Any]) -> dict[str, bool]:
    a = row["achieved"]
    attack = row["attack"]
    if attack == "descriptor-storage":
        return descriptor_checks(a)
    if attack == "introduction-replay":
        return replay_checks(a, params)
    if attack == "intro-flood":
        seen = a.get("victim_held_at_end") or {}
        acks = sum(a["acks"].values())
        return {
            "intro forwards bound": a["introduce2_at_service"] <= a["forward_bound"]
            and a["acks_sent_on"] == a["introduce2_at_service"],
            "intro rate limited": a["acks_rate_limited"] > 0,
            "intro counted": seen.get("introduce_rate_limited") == a["acks_rate_limited"]
            and seen.get("introduce_forwarded") == a["acks_sent_on"]
            and acks == a["introductions_sent"],
        }
    seen = a.get("victim_held_at_peak") or {}
    refused = a.get("answer_DESTROY_RESOURCE_LIMIT", 0)
    sources = params["sources"]
    if attack == "intro-registrations":
        held = seen.get("intro_registrations_held", INTRO_PER_NODE + 1)
        return {
            "intro source cap": a["registered_per_source_max"] <= INTRO_PER_SOURCE
            and seen.get("intro_refused_source", 0) > 0,
            "intro node cap": held <= INTRO_PER_NODE
            and (sources * INTRO_PER_SOURCE <= INTRO_PER_NODE or held == INTRO_PER_NODE),
            "intro counted": seen.get("intro_registered") == a["registered_total"]
            and seen.get("intro_refused_source", 0) + seen.get("intro_refused_full", 0) == refused,
        }
    held = seen.get("rendezvous_pending_held", COOKIES_PER_NODE + 1)
    checks = {
        "cookie source cap": a["registered_per_source_max"] <= COOKIES_PER_SOURCE
        and seen.get("establish_refused_source", 0) > 0,
        "cookie node cap": held <= COOKIES_PER_NODE
        and (sources * COOKIES_PER_SOURCE <= COOKIES_PER_NODE or held == COOKIES_PER_NODE),
        "cookie counted": seen.get("rendezvous_registered") == a["registered_total"]
        and seen.get("establish_refused_source", 0) + seen.get("establish_refused_full", 0)
        == refused,
    }
    if params.get("hold", 0) > 0:
        later = a.get("victim_after_hold") or {}
        checks["cookies expire"] = (
            later.get("rendezvous_pending_held") == 0
            and later.get("rendezvous_expired") == a["registered_total"]
            and a.get("circuits_alive_after_hold") == a["registered_total"]
        )
    return checks


def wants_status(attack: str) -> bool:
    return attack in COUNTERS


def status_snapshot(node: LocalNode) -> Status | None:
    reply = node.try_call("status")
    return reply if reply.get("ok") else None


def status_figures(attack: str, before: Status | None, after: Status | None) -> Status:
    if before is None or after is None:
        return {"status_missing": True}
    was, now = before["counters"], after["counters"]
    out: dict[str, Any] = {
        "counters_added": {k: now.get(k, 0) - was.get(k, 0) for k in COUNTERS[attack]}
    }
    if attack == "relay-directory-flood":
        out["relay_directory_held"] = after["dht"]["relay_directory_held"]
    return out


def status_checks(row: dict[str, Any]) -> dict[str, bool]:
    seen = row["victim_status"]
    if seen.get("status_missing"):
        return {"victim status": False}
    added, a = seen["counters_added"], row["achieved"]
    if row["attack"] == "relay-directory-flood":
        unlisted_refused = a.get("unlisted_refused_not-from-listed-address", 0)
        return {
            "directory cap": max(seen["relay_directory_held"]) <= DIRECTORY_SLOTS
            and a["stored_per_key_max"] <= DIRECTORY_SLOTS,
            "cap reached": a.get("listed_refused_full", 0) > 0,
            "unlisted refused": a.get("unlisted_stored", 0) == 0
            and unlisted_refused > 0
            and added["dht_refused_not-from-listed-address"] >= unlisted_refused,
            "honest relay kept": a.get("honest_relay_seen_after") is not None,
        }
    nudged = added["allow_names_nudged"]
    refused = a.get("refused_NOT_ALLOWED", 0)
    return {
        "nudges": 1 <= nudged <= row["window_s"] // NUDGE_EVERY + 1,
        "lookups": added["allow_names_lookups"] <= nudged + QUIET_CHASE,
        "refused": a.get("opens", 0) > 0
        and refused == a["opens"]
        and a.get("streams_opened", 0) == 0
        and added["streams_refused_not_allowed"] == refused,
    }


def status_note(row: dict[str, Any]) -> list[str]:
    seen = row.get("victim_status", {})
    if seen.get("status_missing") or not seen:
        return []
    parts = [f"{k} +{v}" for k, v in seen["counters_added"].items()]
    if "relay_directory_held" in seen:
        parts.append(f"held per key {seen['relay_directory_held']}")
    return parts
