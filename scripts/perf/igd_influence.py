"""IGD's influence step, batched (the package's ``InfluenceGuide._influence``) against a per-image loop.

Chen et al., ICLR 2025 (IGD): at each guided sampling step every sample's surrogate gradient is compared with its
class's real gradient. The package takes the per-sample gradients of a batch at once (``torch.func.vmap`` of
``torch.func.grad``); the loop below takes them one image at a time, as the authors' code does. Both run one step on
the same batch (one image per class) with random surrogate snapshots and targets; the script reports the median
time of each and the largest relative difference of their gradients.

    python scripts/perf/igd_influence.py --threads 2 --json results/perf/ideas/igd_influence.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F


def loop_influence(guide: Any, x: torch.Tensor, t: torch.Tensor, chain: Any) -> torch.Tensor:
    """The influence gradient with one per-image double backward per snapshot (the authors' loop)."""
    from torch.func import functional_call

    from gendistill.generative.backbone import resize_pixels

    x = x.detach().requires_grad_(True)
    out = guide.model(x, chain.timestep_map[t]).to(x.dtype)
    _, x0 = chain.eps_and_x0(chain.split_output(out, x.shape[1])[0], x, t)
    pixels = guide.backbone.decode(x0, differentiable=True)
    images = guide.train.preprocessing.apply(resize_pixels(pixels, guide.train.image_shape[-1], clamp=False))
    loss = x.new_zeros(())
    for params, target in zip(guide.snapshots, guide.targets, strict=True):
        names = list(params)
        theta = [params[n].detach().requires_grad_(True) for n in names]
        for i in range(len(images)):
            ce = F.cross_entropy(functional_call(guide.net, dict(zip(names, theta, strict=True)), (images[i:i + 1],)),
                                 guide.labels[i:i + 1])
            g = torch.cat([gr.flatten() for gr in torch.autograd.grad(ce, theta, create_graph=True)])
            ref = target[int(guide.labels[i])]
            loss = loss + 1.0 - torch.dot(g, ref) / (g.norm() * ref.norm() + 1e-6)
    return torch.autograd.grad(loss / len(guide.snapshots), x)[0]


def measure(backbone: Any, train: Any, *, network: str = "convnet", snapshots: int = 4, step: int = 35,
            repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Time one influence step both ways on a batch of one image per class of ``train``."""
    from gendistill.generative.guided import IGDConfig, InfluenceGuide
    from gendistill.generative.sample import guided_model
    from gendistill.nn.nets import create_network

    gen = torch.Generator().manual_seed(seed)
    c, size, _ = train.image_shape
    net = create_network(network, c, train.num_classes, size, seed=seed)
    for p in net.parameters():
        p.requires_grad_(False)
    snaps = [{k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in net.named_parameters()}
             for _ in range(snapshots)]
    width = sum(v.numel() for v in snaps[0].values())
    targets = [torch.randn(train.num_classes, width, generator=gen) for _ in snaps]
    labels = torch.arange(train.num_classes)
    model = guided_model(backbone, labels, 1.0, 0, (0.0, 1.0))
    chain = backbone.diffusion.respace(50)
    guide = InfluenceGuide(backbone, train, net, snaps, targets, labels, [[] for _ in labels], model,
                           IGDConfig(cfg_scale=1.0))
    x = torch.randn((len(labels), *backbone.latent_shape), generator=gen)
    t = torch.full((len(labels),), step, dtype=torch.long)
    batched = guide._influence(x, t, chain)[0]
    looped = loop_influence(guide, x, t, chain)
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    for _ in range(repeats):
        for name, fn in (("batched", lambda: guide._influence(x, t, chain)), ("loop", lambda: loop_influence(
                guide, x, t, chain))):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": len(labels), "snapshots": snapshots, "network": network, "step": step, "repeats": repeats,
            "batched_s": med["batched"], "loop_s": med["loop"], "speedup": med["loop"] / med["batched"],
            "max_rel_diff": float((batched - looped).abs().max() / looped.abs().max().clamp_min(1e-30))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gendistill/dit-fashion-mnist")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from gendistill.data.datasets import load_dataset
    from gendistill.generative.backbone import load_backbone

    result = {**measure(load_backbone(args.model), load_dataset(args.dataset, args.data_root).train,
                        repeats=args.repeats), "model": args.model, "dataset": args.dataset, "threads": args.threads}
    print(json.dumps(result, indent=2))
    if args.json:
        from gendistill.utils.atomic import atomic_json

        atomic_json(args.json, result)


if __name__ == "__main__":
    main()
