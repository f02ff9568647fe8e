"""VX6: reach localhost-only services from other machines over an encrypted P2P overlay."""

__version__ = "0.1.0"
