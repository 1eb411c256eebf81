"""Lowest layer: errors, atomic writes, seeding, typed configs, threads, resources and plugin discovery.

Nothing here imports any other part of gendistill.
"""
