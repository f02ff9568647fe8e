"""The roles that make a running node (links, resolver, owner side, forwards, circuit
pool, publisher, records, control), each handed the narrow interfaces it uses; `wiring`
builds them and runs them under one TaskGroup."""
