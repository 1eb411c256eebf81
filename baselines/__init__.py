"""Pixel-optimisation baselines (DD, DC, DSA, DM, CAFE, ...), registered into gendistill's method registry.

Importing this package registers every method module it contains.
"""
