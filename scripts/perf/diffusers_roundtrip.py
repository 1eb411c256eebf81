"""How closely the diffusers-side pipelines reproduce gendistill's sampler (issue "Saved generative models must load
and sample correctly in diffusers' own pipelines"): the max abs pixel difference ([0, 1] scale) and the time of each.

* a tiny latent DiT with DiffFit scales folded into its weights (the test suite's model) in diffusers' ``DiTPipeline``
  with DPM-Solver++, 12 steps, guidance 1;
* each model named on the command line (a shipped id such as ``gendistill/dit-mnist`` or a saved folder) in the
  package's ``GendistillPipeline``: one image per class, guidance 4, the ancestral sampler (50 steps) and
  DPM-Solver++ (20 steps).

    python scripts/perf/diffusers_roundtrip.py gendistill/dit-mnist --json results/interop/diffusers_roundtrip.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from gendistill.generative.backbone import load_backbone, save_backbone
from gendistill.generative.hub import resolve_model_source
from gendistill.generative.pipeline import GendistillPipeline
from gendistill.generative.sample import image_seeds, sample_images
from gendistill.utils.atomic import atomic_json


def _generators(seeds: torch.Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def tiny_latent_in_dit_pipeline() -> float:
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from test_diffusers_interop import _latent_dit

    folder = Path(tempfile.mkdtemp()) / "m"
    backbone = _latent_dit()
    save_backbone(backbone, folder)
    labels, seeds = torch.tensor([0, 3, 7]), image_seeds(0, torch.arange(3), 1)
    ours = sample_images(backbone, labels, seeds, steps=12, cfg_scale=1.0, sampler="dpmsolver++", progress=False)
    pipe = DiTPipeline.from_pretrained(folder)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                             solver_order=2, lower_order_final=True)
    theirs = torch.as_tensor(pipe(class_labels=labels.tolist(), guidance_scale=1.0, generator=_generators(seeds),
                                  num_inference_steps=12, output_type="pt").images)
    theirs = theirs if theirs.shape[1] == 3 else theirs.permute(0, 3, 1, 2)
    return float((theirs - ours).abs().max())


def pixel_model_in_gendistill_pipeline(name: str) -> dict[str, dict[str, float]]:
    backbone = load_backbone(resolve_model_source(name))
    labels = torch.arange(len(backbone.id2label) or 10)
    seeds = image_seeds(0, labels, 1)
    out = {}
    for sampler, steps in (("ancestral", 50), ("dpmsolver++", 20)):
        t0 = time.perf_counter()
        ours = sample_images(backbone, labels, seeds, steps=steps, cfg_scale=4.0, guided_channels=0, sampler=sampler,
                             progress=False)
        t1 = time.perf_counter()
        pipe = GendistillPipeline.from_pretrained(name)
        theirs = pipe(class_labels=labels.tolist(), guidance_scale=4.0, num_inference_steps=steps, sampler=sampler,
                      generator=_generators(seeds), output_type="pt").images
        t2 = time.perf_counter()
        out[f"{sampler}{steps}_g4"] = {"max_abs_diff": float((theirs - ours).abs().max()), "gendistill_s": t1 - t0,
                                       "pipeline_s": t2 - t1}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="shipped ids or saved model folders (pixel space)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"tiny_latent_dit_in_DiTPipeline_dpmsolver12": tiny_latent_in_dit_pipeline(),
              **{f"{m}_GendistillPipeline": pixel_model_in_gendistill_pipeline(m) for m in args.models}}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
