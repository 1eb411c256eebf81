"""Presets (``<method>/<dataset>_ipc<k>.yaml``, ``cpu.yaml``, ``smoke.yaml``) and bench specs (``bench/``),
installed as the package data ``gendistill.configs``."""
