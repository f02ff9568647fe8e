"""The error a home that is unsafe or unusable raises (here so that vx6.store.home and
the modules it is made of share it)."""

from __future__ import annotations

from vx6.errors import VX6Error


class HomeError(VX6Error):
    """The home directory or a key file in it is unsafe or unusable."""
