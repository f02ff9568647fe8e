"""What a node keeps on disk: the SQLite registry (schema, bounds, health, the in-memory
memo of pins and claims), the home directory's files and keys, and config.toml."""
