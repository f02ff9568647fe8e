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
