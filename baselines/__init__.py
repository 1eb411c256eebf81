"""Pixel-optimisation baselines (DD, DC, DSA, DM, CAFE, ...), registered into gendistill's method registry.

Importing this package registers every method module it contains.
"""

from . import cafe, datm, dc, dd, dm, dq, idc, kip, mtt  # noqa: E402,F401
