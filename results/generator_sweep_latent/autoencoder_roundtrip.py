"""Set-quality report of a set's images passed through a latent model's autoencoder (encode to the latent mean,
decode): the best a latent model with that autoencoder could score, next to the images themselves.

    python results/generator_sweep_latent/autoencoder_roundtrip.py SYNSET_DIR MODEL_DIR OUT.json [DATASET]
"""
import dataclasses
import json
import sys

import torch

from gendistill.api import load_synset
from gendistill.data.datasets import load_dataset
from gendistill.evaluation.metrics import set_quality
from gendistill.generative.backbone import load_backbone

torch.set_num_threads(1)
synset_dir, model, out = sys.argv[1:4]
dataset = sys.argv[4] if len(sys.argv) > 4 else "fashion_mnist"
synset = load_synset(synset_dir)
backbone = load_backbone(model)
pixels = synset.to_pixels()
with torch.no_grad():
    rec = torch.cat([backbone.decode(backbone.encode(pixels[i:i + 100])) for i in range(0, len(pixels), 100)])
mse = float((rec - pixels).pow(2).mean())
roundtrip = dataclasses.replace(synset, images=synset.preprocessing.apply(rec),
                                meta={**synset.meta, "note": "autoencoder round trip"})
report = set_quality(roundtrip, load_dataset(dataset).train)
report["reconstruction_mse"] = mse
with open(out, "w") as fh:
    json.dump(report, fh, indent=2, default=str)
print(f"reconstruction MSE {mse:.4f};", {k: round(v, 3) for k, v in report["summary"].items()
                                           if k in ("precision", "recall", "density", "coverage", "fd")})
