"""Pixel-optimisation baselines (DD, DC, DSA, DM, CAFE, ...), registered into gendistill's method registry.

Importing this package registers every method module it contains.
"""

from . import cafe, dc, dd, dm  # noqa: E402,F401
