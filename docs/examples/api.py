"""The Python API in a few lines: distill, save, load, evaluate (runs in about a minute on 2 CPU cores).

    python docs/examples/api.py [--out runs/api-example] [--epochs 20]

Uses MNIST when the data root ($GENDISTILL_DATA) holds it, else scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

import argparse

import gendistill
from gendistill.utils.errors import DatasetNotFoundError


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/api-example")
    ap.add_argument("--epochs", type=int, default=20, help="evaluation epochs (reduced: labelled in the result)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--ipc", type=int, default=10)
    args = ap.parse_args(argv)

    try:
        splits = gendistill.load_dataset("mnist")
    except DatasetNotFoundError:
        splits = gendistill.load_dataset("digits")
    print(splits.describe())

    # 1. distill into a run folder (config.yaml, synset/ with a grid.png) - herding with its reduced CPU preset
    synset = gendistill.distill("herding", splits, ipc=args.ipc, out=f"{args.out}/herding", preset="cpu",
                                overwrite=True)
    print(f"distilled {len(synset)} images ({synset.meta['method']}, preset {synset.meta['preset']})")

    # 2. load it back (a run folder or its synset/ folder both work)
    synset = gendistill.load_synset(f"{args.out}/herding")

    # 3. evaluate under the method's own protocol (protocol=None), with a reduced, labelled budget
    result = gendistill.evaluate(synset, splits.test, epochs=args.epochs, runs=args.runs)
    print(f"protocol {result.protocol['name']} ({result.protocol_source}): {result.summary()}")


if __name__ == "__main__":
    main()
