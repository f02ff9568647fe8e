"""The node's TOML config file (`config.toml` in the home), validated on load.

Example:

    name = "alice"
    listen = ["[::]:4242"]
    peers = ["[2001:db8::7]:4242"]
    # relay = true                 # carry circuits for others (advertised in the record)
    # circuit_lifetime = 600       # seconds a relay circuit takes new connections
    # circuit_idle_timeout = 300   # a relay destroys circuits without a cell this long
    # onion_key_lifetime = "7d"    # onion keys rotate this often (seconds, or "12h", "7d");
    #                              # the previous key is still accepted for one more lifetime
    # peer_retry_start = 1.0       # seconds before redialling a peer / re-pinging a
    # peer_retry_max = 60.0        # bootstrap address; doubles (with +-20 % jitter) up
    #                              # to the max, forever (tests set a small start)

    [services.ssh]
    target = "127.0.0.1:22"
    allow = ["bob", "k3c...52 base32 chars...q"]   # names or keys
    # public = true                # open to every key (explicit choice)
    # allow_remote_target = true   # permit a non-loopback target

    [forwards.alice-web]
    service = "alice.web"
    local = "127.0.0.1:8080"
    # via = "[2001:db8::5]:4242"   # direct IPv6 mode: no discovery
    # hops = 3                     # relay proxy mode: through 3 relays (1..5)
    # relay_fallback = 2           # direct, but through 2 relays if the owner is unreachable

    [hidden.web]                   # a hidden service, reached by its alias (docs/hidden.md)
    target = "127.0.0.1:8080"      # see vx6/store/hidden_config.py for every key
    public = true

    [owner_limits]                 # bounds on streams to this node's services (defaults)
    # streams = 4096               # open at once, node-wide
    # streams_per_key = 256        # open at once per client key (or anonymous circuit)
    # pending_connects = 512       # target connections being set up, node-wide
    # pending_connects_per_key = 128  # (a client may open 100 connections at once)

    [link_limits]                  # who gets a link (vx6/core/admission.py); defaults shown
    # max_links = 1024             # all links, in and out
    # reserved_links = 64          # of those, kept for trusted keys and our own dials
    #                              # (default: 64 or a quarter of max_links if smaller)
    # pending_total = 256          # inbound connections not yet authenticated
    # pending_per_source = 8       # ... from one IPv6 /64 or IPv4 /32
    # links_per_host = 32          # inbound links from one /64 or /32
    # links_per_network = 128      # inbound links from one /48 or /24
    # links_per_key = 4            # inbound links from one identity key
    # per_port_networks = ["127.0.0.0/8", "::1/128", "fd76:7836::/48", "198.18.0.0/15"]

    [registry_limits]              # the SQLite registry's caps (vx6/store_bounds.py)
    # max_records = 20000          # records held; strangers' evicted first, ours never
    # max_bytes = 33554432         # bytes of record blobs
    # max_per_signer = 256         # records one key may hold
    # max_peers = 2000             # remembered peer addresses

Command-line flags win over the file; services exposed with `vx6 expose` are kept in the
registry and merge with those declared here (the file wins on a name clash). SIGHUP (or
`vx6 reload`) applies changed services and forwards to a running node (and reports
changed hidden services) (vx6/node/reload.py).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vx6.core.admission import AdmissionLimits
from vx6.core.backoff import RetrySchedule
from vx6.core.circuit.onion_schedule import ONION_KEY_LIFETIME
from vx6.core.names import parse_service_address, validate_allow_entry, validate_label
from vx6.errors import UsageError
from vx6.net.addresses import is_loopback, parse_endpoint
from vx6.store.bounds import RegistryLimits
from vx6.store.hidden_config import HiddenServiceConfig, parse_hidden_tables

DEFAULT_PORT = 4242
MAX_RELAYS = 5  # relays on one circuit; the exit makes the sixth hop (docs/circuits.md)
# Like Tor's MaxCircuitDirtiness: connections made more than this long after a circuit's
# first one go over a fresh circuit, so one circuit does not link a day of connections.
CIRCUIT_LIFETIME = 600.0
CIRCUIT_LIFETIME_RANGE = (1.0, 86400.0)
# Relays destroy circuits idle this long (core/circuit/relay_idle.py). Clients keep theirs
# alive with a KEEPALIVE every ~30 s at most, so the floor leaves them a wide margin.
CIRCUIT_IDLE_TIMEOUT = 300.0
CIRCUIT_IDLE_TIMEOUT_RANGE = (60.0, 86400.0)
# Short lifetimes are for tests: a client whose node record is two lifetimes old can no
# longer build through the node, so real nodes want days (a record lives 24 h).
ONION_KEY_LIFETIME_RANGE = (1.0, 365 * 86400.0)
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PEER_RETRY_RANGE = (0.01, 3600.0)  # a small start keeps the end-to-end tests quick


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    target_host: str
    target_port: int
    allow: tuple[str, ...] = ()
    public: bool = False
    allow_remote_target: bool = False


@dataclass(frozen=True)
class OwnerLimits:
    """What clients may make the owner side hold (docs/security.md, "Resource bounds",
    "Owner streams"): streams to this node's services and connections to their targets
    still being set up, node-wide and per client key (an anonymous circuit client counts
    per circuit)."""

    streams: int = 4096
    streams_per_key: int = 256
    # An honest client may open a burst of connections at once (pgbench -c 100, a
    # browser, parallel rsync): each is a pending connect until its target answers.
    pending_connects: int = 512
    pending_connects_per_key: int = 128


OWNER_LIMIT_RANGE = (1, 1_000_000)


@dataclass(frozen=True)
class ForwardConfig:
    name: str
    service: str
    local_host: str
    local_port: int
    via: tuple[str, int] | None = None
    # Given only a port, the forward listens on 127.0.0.1 and (if the host has it) ::1.
    dual_loopback: bool = False
    hops: int = 0  # relay proxy mode: this many relays (1..5); 0 = direct
    relay_fallback: int = 0  # direct, but over this many relays if the owner is unreachable
    profile: str = ""  # a hidden service (an alias or petname): "fast" or "balanced"


@dataclass
class NodeConfig:
    name: str | None = None
    listen: list[tuple[str, int]] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    advertise: list[tuple[str, int]] = field(default_factory=list)
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    forwards: dict[str, ForwardConfig] = field(default_factory=dict)
    hidden: dict[str, HiddenServiceConfig] = field(default_factory=dict)
    relay: bool = False
    circuit_lifetime: float = CIRCUIT_LIFETIME
    owner_limits: OwnerLimits = field(default_factory=OwnerLimits)
    link_limits: AdmissionLimits = field(default_factory=AdmissionLimits)
    circuit_idle_timeout: float = CIRCUIT_IDLE_TIMEOUT
    onion_key_lifetime: float = ONION_KEY_LIFETIME
    registry_limits: RegistryLimits | None = None  # None: VX6_REGISTRY_* or the defaults
    peer_retry: RetrySchedule = field(default_factory=RetrySchedule)

    def with_flags(self, cli: NodeConfig) -> NodeConfig:
        """This (the file's) config with the command line's flags applied: a flag given
        replaces the file's value, peers and bootstrap addresses add to the file's."""
        return NodeConfig(
            name=cli.name or self.name,
            listen=cli.listen or self.listen,
            peers=self.peers + [p for p in cli.peers if p not in self.peers],
            bootstrap=self.bootstrap + [p for p in cli.bootstrap if p not in self.bootstrap],
            advertise=cli.advertise or self.advertise,
            services=dict(self.services),
            forwards=dict(self.forwards),
            hidden=dict(self.hidden),  # the file only
            relay=cli.relay or self.relay,
            circuit_lifetime=self.circuit_lifetime,  # the file only: no flag
            owner_limits=self.owner_limits,  # the file only
            link_limits=self.link_limits,  # the file only
            circuit_idle_timeout=self.circuit_idle_timeout,  # the file only
            onion_key_lifetime=self.onion_key_lifetime,  # the file only
            registry_limits=self.registry_limits,  # the file only
            peer_retry=self.peer_retry,  # the file only
        )


def service_config(
    name: str, target: str, allow: list[str], public: bool, allow_remote_target: bool
) -> ServiceConfig:
    """Validate one service the same way for the CLI and the file."""
    label = validate_label(name, "service name")
    try:
        host, port = parse_endpoint(target)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if port == 0:
        raise UsageError("target port must be 1-65535")
    if not is_loopback(host) and not allow_remote_target:
        raise UsageError(
            f"target {target} is not a loopback address; pass --allow-remote-target to permit it"
        )
    entries = tuple(dict.fromkeys(validate_allow_entry(entry) for entry in allow))
    return ServiceConfig(label, host, port, entries, public, allow_remote_target)


def _relays(value: int, what: str) -> int:
    if not 0 <= value <= MAX_RELAYS:
        raise UsageError(f"{what} must be 1..{MAX_RELAYS} relays (0: none), not {value}")
    return value


def forward_config(
    name: str,
    service: str,
    local: str,
    via: str | None,
    hops: int = 0,
    relay_fallback: int = 0,
    profile: str = "",
) -> ForwardConfig:
    hidden = "." not in service  # an alias or a petname: the node resolves it
    if not hidden:
        parse_service_address(service)
    if profile not in ("", "fast", "balanced"):
        raise UsageError(f"--profile is fast or balanced, not {profile!r}")
    if hidden and (via or hops or relay_fallback):
        raise UsageError("a hidden service is reached by --profile, not --via or --hops")
    if profile and not hidden:
        raise UsageError("--profile is for hidden services (an alias or a petname)")
    _relays(hops, "--hops")
    _relays(relay_fallback, "--relay-fallback")
    if via and (hops or relay_fallback):
        raise UsageError("--via is direct mode; it does not combine with relays")
    if hops and relay_fallback:
        raise UsageError("--relay-fallback is for direct forwards; --hops already relays")
    try:
        host, port = parse_endpoint(local, None) if ":" in local else ("127.0.0.1", int(local))
        via_ep = parse_endpoint(via) if via else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not 0 <= port <= 65535:
        raise UsageError("local port must be 0-65535")
    return ForwardConfig(
        name,
        service,
        host,
        port,
        via_ep,
        dual_loopback=":" not in local,
        hops=hops,
        relay_fallback=relay_fallback,
        profile=profile or ("fast" if hidden else ""),
    )


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"config: {what} must be an integer")
    return value


def _seconds(value: Any, what: str, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise UsageError(f"config: {what} must be a number of seconds from {low:g} to {high:g}")
    return float(value)


def _duration(value: Any, what: str, bounds: tuple[float, float]) -> float:
    """Seconds as a number, or a string with a unit: "90s", "30m", "12h", "7d"."""
    if isinstance(value, str):
        text = value.strip().lower()
        unit = DURATION_UNITS.get(text[-1:]) if text else None
        try:
            value = float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            raise UsageError(
                f'config: {what} must be seconds or a duration such as "12h" or "7d"'
            ) from None
    return _seconds(value, what, bounds)


def _int_table(value: Any, what: str, known: set[str], high: int) -> dict[str, int]:
    """A table of positive integer settings, every key one of `known`."""
    if not isinstance(value, dict):
        raise UsageError(f"config: {what} must be a table")
    unknown = set(value) - known
    if unknown:
        raise UsageError(f"config: {what}: unknown key {sorted(unknown)[0]!r}")
    limits: dict[str, int] = {}
    for key, raw in value.items():
        number = _int(raw, f"{what}.{key}")
        if not 1 <= number <= high:
            raise UsageError(f"config: {what}.{key} must be from 1 to {high}")
        limits[key] = number
    return limits


def _owner_limits(value: Any) -> OwnerLimits:
    known = set(OwnerLimits.__dataclass_fields__)
    return OwnerLimits(**_int_table(value, "owner_limits", known, OWNER_LIMIT_RANGE[1]))


def _registry_limits(value: Any) -> RegistryLimits | None:
    """None when the file sets none: then the environment's or the defaults apply."""
    if value is None:
        return None
    known = set(RegistryLimits.__dataclass_fields__)
    return RegistryLimits(**_int_table(value, "registry_limits", known, 1 << 40))


def _link_limits(value: Any) -> AdmissionLimits:
    if not isinstance(value, dict):
        raise UsageError("config: link_limits must be a table")
    known = {f for f in AdmissionLimits.__dataclass_fields__ if f != "per_port_networks"}
    unknown = set(value) - known - {"per_port_networks"}
    if unknown:
        raise UsageError(f"config: link_limits: unknown setting(s) {', '.join(sorted(unknown))}")
    args: dict[str, Any] = {k: _int(v, f"link_limits.{k}") for k, v in value.items() if k in known}
    if "max_links" in args and "reserved_links" not in args:  # a small table keeps a quarter
        args["reserved_links"] = min(AdmissionLimits.reserved_links, args["max_links"] // 4)
    if "per_port_networks" in value:
        nets = value["per_port_networks"]
        if not isinstance(nets, list) or not all(isinstance(n, str) for n in nets):
            raise UsageError("config: link_limits.per_port_networks must be a list of strings")
        args["per_port_networks"] = tuple(nets)
    return AdmissionLimits(**args)


def _endpoints(value: Any, what: str) -> list[tuple[str, int]]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"config: {what} must be a list of strings")
    try:
        return [parse_endpoint(v, DEFAULT_PORT) for v in value]
    except ValueError as exc:
        raise UsageError(f"config: {what}: {exc}") from exc


def _peer_retry(data: dict[str, Any]) -> RetrySchedule:
    default = RetrySchedule()
    start = _seconds(
        data.get("peer_retry_start", default.start), "peer_retry_start", PEER_RETRY_RANGE
    )
    cap = _seconds(data.get("peer_retry_max", default.cap), "peer_retry_max", PEER_RETRY_RANGE)
    if start > cap:
        raise UsageError("config: peer_retry_start must not exceed peer_retry_max")
    return RetrySchedule(start=start, cap=cap)


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"config: {what} must be a table")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"config: {what} must be a list of strings")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"config: {what} must be true or false")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"config: {what} must be a string")
    return value


def load_config(path: Path) -> NodeConfig:
    cfg = NodeConfig()
    if not path.exists():
        return cfg
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config {path}: {exc}") from exc
    if "name" in data:
        cfg.name = validate_label(_text(data["name"], "name"), "name")
    cfg.listen = _endpoints(data.get("listen", []), "listen")
    cfg.peers = _endpoints(data.get("peers", []), "peers")
    cfg.bootstrap = _endpoints(data.get("bootstrap", []), "bootstrap")
    cfg.advertise = _endpoints(data.get("advertise", []), "advertise")
    cfg.relay = _bool(data.get("relay", False), "relay")
    cfg.circuit_lifetime = _seconds(
        data.get("circuit_lifetime", CIRCUIT_LIFETIME), "circuit_lifetime", CIRCUIT_LIFETIME_RANGE
    )
    cfg.owner_limits = _owner_limits(data.get("owner_limits", {}))
    cfg.link_limits = _link_limits(data.get("link_limits", {}))
    cfg.registry_limits = _registry_limits(data.get("registry_limits"))
    cfg.circuit_idle_timeout = _seconds(
        data.get("circuit_idle_timeout", CIRCUIT_IDLE_TIMEOUT),
        "circuit_idle_timeout",
        CIRCUIT_IDLE_TIMEOUT_RANGE,
    )
    cfg.onion_key_lifetime = _duration(
        data.get("onion_key_lifetime", ONION_KEY_LIFETIME),
        "onion_key_lifetime",
        ONION_KEY_LIFETIME_RANGE,
    )
    cfg.peer_retry = _peer_retry(data)
    for name, svc in _table(data.get("services", {}), "services").items():
        if not isinstance(svc, dict) or "target" not in svc:
            raise UsageError(f"config: services.{name} needs a target")
        cfg.services[name] = service_config(
            name,
            _text(svc["target"], f"services.{name}.target"),
            _strings(svc.get("allow", []), f"services.{name}.allow"),
            _bool(svc.get("public", False), f"services.{name}.public"),
            _bool(svc.get("allow_remote_target", False), f"services.{name}.allow_remote_target"),
        )
    for name, fwd in _table(data.get("forwards", {}), "forwards").items():
        if not isinstance(fwd, dict) or "service" not in fwd or "local" not in fwd:
            raise UsageError(f"config: forwards.{name} needs service and local")
        via = fwd.get("via")
        cfg.forwards[name] = forward_config(
            name,
            _text(fwd["service"], f"forwards.{name}.service"),
            _text(fwd["local"], f"forwards.{name}.local"),
            _text(via, f"forwards.{name}.via") if via is not None else None,
            hops=_int(fwd.get("hops", 0), f"forwards.{name}.hops"),
            relay_fallback=_int(fwd.get("relay_fallback", 0), f"forwards.{name}.relay_fallback"),
        )
    cfg.hidden = parse_hidden_tables(data.get("hidden", {}), path)
    cfg.hidden = parse_hidden_tables(data.get("hidden", {}), path)
    return cfg
