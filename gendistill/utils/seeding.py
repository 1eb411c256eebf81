"""Explicit, reproducible seeding: ``torch.Generator`` objects and derived seeds, never the wall clock."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

__all__ = ["derive_seed", "make_generator", "seeded"]


def derive_seed(seed: int, *keys: int | str) -> int:
    """Derive a 63-bit seed from a base seed and any number of keys (stable across runs and platforms).

    Args:
        seed: the base seed.
        *keys: what the derived seed is for, e.g. ``("net", iteration)``.
    """
    text = "/".join(str(k) for k in (seed, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A new ``torch.Generator`` on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. module construction, whose default init uses the global RNG) under a fixed seed.

    The global RNG state is forked and restored afterwards, so nothing outside the block is affected.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (1 << 63))
        yield
