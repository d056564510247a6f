"""Metrics of explanation maps: pure torch functions over batches of maps.

- :func:`pointing_game`: is each map's maximum on its object (localization)?
"""

from .localization import pointing_game

__all__ = ["pointing_game"]
