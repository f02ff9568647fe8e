"""`python -m vx6.sim`: run one simulation and print its figures (one JSON object with
--json, else one `name: value` line each)."""

from __future__ import annotations

import argparse
import json
import sys

from vx6.sim.scenario import SimParams, run_simulation


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vx6.sim", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000, help="nodes in all (default 1000)")
    parser.add_argument("--churn", type=_fraction, default=0.0, help="honest nodes gone")
    parser.add_argument("--hostile", type=_fraction, default=0.0, help="hostile nodes")
    parser.add_argument("--lookups", type=int, default=200, help="record lookups")
    parser.add_argument(
        "--name-lookups", type=int, default=None, help="name lookups (default: --lookups)"
    )
    parser.add_argument(
        "--hostile-prefixes", type=int, default=8, help="IPv6 /48s the hostile nodes use"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.lookups < 0:
        parser.error("need --nodes >= 2 and --lookups >= 0")
    params = SimParams(
        nodes=args.nodes,
        churn=args.churn,
        hostile=args.hostile,
        lookups=args.lookups,
        name_lookups=args.name_lookups,
        seed=args.seed,
        hostile_prefixes=args.hostile_prefixes,
    )
    figures = run_simulation(params)
    if args.json:
        json.dump(figures, sys.stdout)
        sys.stdout.write("\n")
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
