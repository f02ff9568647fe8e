"""Hidden services, sans-IO: aliases, descriptors and the four roles (docs/hidden.md)."""
