"""What a client command may name, and the settings a hidden service is configured with
(docs/hidden.md sections 1, 6, 7 and "CLI and config").

`vx6 connect X` and `vx6 nc X` take three kinds of X, told apart by their shape alone:

* an alias: one label of exactly ALIAS_LEN characters (`looks_like_alias`); it is parsed
  strictly and its error (length, alphabet, checksum, version, key) is the answer, as
  it is for any dotless text too long to be a petname;
* a petname: a label with no dot (1..32 characters, so never alias-length), looked up in
  the user's own petname table, which the caller hands in as a function;
* anything else: a service address `NAME.SERVICE` (vx6/core/names.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vx6.core.hidden.alias import encode_alias, looks_like_alias, parse_alias
from vx6.core.names import ServiceAddress, parse_service_address, validate_label
from vx6.errors import UsageError
from vx6.wire.records import MAX_LABEL_LEN

PROFILES = ("fast", "balanced")  # section 6
DEFAULT_PROFILE = "fast"
MAX_DESCRIPTOR_CLIENTS = 12  # client entries in one descriptor (section 3)
INTRO_RATE = 25  # introductions per second per intro (section 7)
INTRO_RATE_RANGE = (1, 100)  # the intro point clamps to 100/s anyway
INTRO_BURST = 200
INTRO_BURST_RANGE = (1, 500)
GUARD_COUNT = 2  # guards a service keeps (section 6)
MAX_PETNAMES = 1024


@dataclass(frozen=True)
class AliasTarget:
    """A hidden service to reach: its alias key, and the petname it was named by."""

    key: bytes
    petname: str | None = None

    def __str__(self) -> str:
        return self.petname or encode_alias(self.key)


def validate_petname(text: str) -> str:
    """A petname in canonical form: a label, never an alias, never dotted."""
    if looks_like_alias(text):
        raise UsageError("a petname must not be an alias: it names one (the second argument)")
    if "." in text:
        raise UsageError(f"petname {text[:60]!r} must be a label (a-z, 0-9, '-'; no dot)")
    return validate_label(text, "petname")


PetnameLookup = Callable[[str], bytes | None]


def parse_target(text: str, petname_key: PetnameLookup) -> ServiceAddress | AliasTarget:
    """The service address, alias or petname `text` names; UsageError saying what is
    wrong otherwise. `petname_key` returns the alias key a petname stands for, or None."""
    stripped = text.strip()
    if looks_like_alias(stripped):
        return AliasTarget(parse_alias(stripped))
    if "." in stripped:
        return parse_service_address(text)
    if len(stripped) > MAX_LABEL_LEN:  # too long for a petname: a mistyped alias
        return AliasTarget(parse_alias(stripped))
    try:
        name = validate_petname(stripped)
    except UsageError:
        return parse_service_address(text)  # its message says NAME.SERVICE
    key = petname_key(name)
    if key is None:
        raise UsageError(
            f"{name!r} is neither a petname you added (`vx6 hidden name add`) nor an "
            "address: expected NAME.SERVICE, an alias or a petname"
        )
    return AliasTarget(key, name)
