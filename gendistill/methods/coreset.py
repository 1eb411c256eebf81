"""Coreset references registered as methods: random, herding, k-center, k-means centroids, class mean.

These are the selection baselines of the DD paper (Wang et al. 2018) and DC's Table 1 (Zhao et al., ICLR 2021).
Herding (Welling, ICML 2009) and k-center (Sener & Savarese, ICLR 2018) select real images greedily in a
feature space: the embedding of a ConvNet trained briefly on real data (``features: trained``, as the DC
paper's coreset baselines), of a random ConvNet (``random``), or raw pixels (``pixels``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from gendistill.data.datasets import RealDataset
from gendistill.distiller import Distiller, budget_field
from gendistill.evaluation.features import FeatureSpec, dataset_features, embed, feature_network
from gendistill.registry import register_method
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import GendistillError
from gendistill.utils.seeding import derive_seed, make_generator

__all__ = ["CoresetConfig", "candidate_indices", "class_features", "kcenter_greedy"]


@dataclasses.dataclass
class CoresetConfig:
    """Options of the coreset methods.

    Attributes:
        features: feature space for herding/k-center/k-means: ``trained``, ``random`` or ``pixels``.
        feature_model: network used for ``trained``/``random`` features.
        feature_epochs: epochs of training on real data for ``trained`` features.
        feature_images_per_class: real images per class used to train the feature network (0 = all).
        candidates_per_class: real images per class the selection (or clustering) considers, a seeded random subset
            (0 = all, as the references select; fewer is a reduced budget, labelled). It bounds the cost of
            embedding a large training split.
        device: where to compute.
    """

    features: Literal["trained", "random", "pixels"] = "trained"
    feature_model: str = "convnet"
    feature_epochs: int = budget_field(2)
    feature_images_per_class: int = budget_field(0, zero_is_full=True)
    candidates_per_class: int = budget_field(0, zero_is_full=True)
    device: str = "cpu"

    def feature_spec(self) -> FeatureSpec:
        """The shared feature-space description (:mod:`gendistill.features`)."""
        return FeatureSpec(space=self.features, model=self.feature_model, epochs=self.feature_epochs,
                           images_per_class=self.feature_images_per_class, device=self.device)


def candidate_indices(train: RealDataset, config: CoresetConfig, seed: int) -> list[torch.Tensor]:
    """Per class, the training indices the selection considers: all of the class, or a seeded random subset of
    ``config.candidates_per_class`` of them (in index order)."""
    gen = make_generator(derive_seed(seed, "candidates"))
    pools = []
    for c in range(train.num_classes):
        idx = train.class_index[c, : int(train.class_counts[c])]
        n = config.candidates_per_class
        if 0 < n < len(idx):
            idx = idx[torch.randperm(len(idx), generator=gen)[:n].sort().values]
        pools.append(idx)
    return pools


def class_features(train: RealDataset, config: CoresetConfig, seed: int, progress: bool = False,
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, D]`` features, in the configured feature space, of every training image or of those at ``index`` (the
    feature network is trained as configured either way)."""
    spec = config.feature_spec()
    if index is None:
        return dataset_features(train, spec, seed, progress)
    if spec.space == "pixels":
        return train.images(index).flatten(1)
    return embed(feature_network(train, spec, seed, progress), train.images(index), device=spec.device,
                 progress=progress)


def _pool_features(train: RealDataset, config: CoresetConfig, seed: int, progress: bool
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The candidate indices of each class and their features (all images: the features of the whole split)."""
    pools = candidate_indices(train, config, seed)
    if not config.candidates_per_class:
        feats = class_features(train, config, seed, progress)
        return pools, [feats[idx] for idx in pools]
    feats = class_features(train, config, seed, progress, index=torch.cat(pools))
    return pools, list(feats.split([len(idx) for idx in pools]))


def kcenter_greedy(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center: start at the sample nearest the mean, then repeatedly add the farthest sample."""
    first = int(torch.argmin(((feats - feats.mean(0)) ** 2).sum(1)))
    picks = [first]
    mind = ((feats - feats[first]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(torch.argmax(mind))
        picks.append(i)
        mind = torch.minimum(mind, ((feats - feats[i]) ** 2).sum(1))
    return torch.tensor(picks)


class _Selector(Distiller):
    """Shared driver: per class, pick ``ipc`` training indices from that class's features."""

    def select(self, feats: torch.Tensor, ipc: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def needs_features(self) -> bool:
        return True

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run=None, progress: bool | None = None
               ) -> SyntheticSet:
        if ipc > int(train.class_counts.min()):
            raise GendistillError(f"--ipc {ipc} exceeds the {int(train.class_counts.min())} real images of the "
                                  f"smallest class of {train.name}")
        gen = make_generator(seed)
        show = self.show_progress(run, progress)
        if self.needs_features():
            pools, feats = _pool_features(train, self.config, seed, show)
        else:
            pools = candidate_indices(train, self.config, seed)
            feats = [idx.float()[:, None] for idx in pools]
        if ipc > min(len(idx) for idx in pools):
            raise GendistillError(f"--ipc {ipc} exceeds candidates_per_class {self.config.candidates_per_class}; "
                                  "raise it or set it to 0 (all images)")
        chosen = []
        for idx, f in zip(pools, feats, strict=True):
            local = self.select(f, ipc, gen)
            chosen.append(idx[local])
        index = torch.cat(chosen)
        return self.make_synset(train, train.images(index), train.labels[index], ipc, seed, source_indices=index)


@register_method("random", config=CoresetConfig, paper="random real subset (DC, Zhao et al. ICLR 2021, Table 1)",
                 year=2021, kind="coreset", default_eval="dc")
class RandomSelection(_Selector):
    """Random real images of each class (the baseline every method must beat)."""

    def needs_features(self) -> bool:
        return False

    def select(self, feats, ipc, generator):
        return torch.randperm(feats.shape[0], generator=generator)[:ipc]


@register_method("herding", config=CoresetConfig, paper="Welling, Herding dynamical weights, ICML 2009",
                 year=2009, kind="coreset", default_eval="dc")
class Herding(_Selector):
    """Greedy herding: each pick moves the running mean of the selection closest to the class mean."""

    def select(self, feats, ipc, generator):
        mu = feats.mean(0)
        total = torch.zeros_like(mu)
        available = torch.ones(feats.shape[0], dtype=torch.bool)
        picks = []
        for k in range(ipc):
            dist = ((mu - (total + feats) / (k + 1)) ** 2).sum(1)
            dist[~available] = float("inf")
            i = int(torch.argmin(dist))
            picks.append(i)
            available[i] = False
            total += feats[i]
        return torch.tensor(picks)


@register_method("kcenter", config=CoresetConfig, paper="Sener & Savarese, Active learning for CNNs: a core-set "
                 "approach, ICLR 2018", year=2018, kind="coreset", default_eval="dc")
class KCenter(_Selector):
    """Greedy k-center: start at the sample nearest the class mean, then repeatedly add the farthest sample."""

    def select(self, feats, ipc, generator):
        return kcenter_greedy(feats, ipc)


@dataclasses.dataclass
class KMeansConfig(CoresetConfig):
    """k-means options (clustering in pixel space by default; centroids are mean images)."""

    features: Literal["trained", "random", "pixels"] = "pixels"
    n_init: int = 3


@register_method("kmeans", config=KMeansConfig, paper="k-means cluster centroids (DC, Zhao et al. ICLR 2021)",
                 year=2021, kind="coreset", default_eval="dc")
class KMeansCentroids(Distiller):
    """k-means per class; each synthetic image is the mean image of one cluster."""

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run=None, progress: bool | None = None
               ) -> SyntheticSet:
        from sklearn.cluster import KMeans

        if ipc > int(train.class_counts.min()):
            raise GendistillError(f"--ipc {ipc} exceeds the real images of the smallest class of {train.name}")
        pools, feats = _pool_features(train, self.config, seed, self.show_progress(run, progress))
        if ipc > min(len(idx) for idx in pools):
            raise GendistillError(f"--ipc {ipc} exceeds candidates_per_class {self.config.candidates_per_class}; "
                                  "raise it or set it to 0 (all images)")
        images, labels = [], []
        for c, (idx, f) in enumerate(zip(pools, feats, strict=True)):
            km = KMeans(n_clusters=ipc, n_init=self.config.n_init, random_state=derive_seed(seed, c) % 2**31)
            assign = torch.from_numpy(km.fit_predict(f.double().numpy())).long()
            members = train.images(idx)
            sums = torch.zeros(ipc, *members.shape[1:]).index_add_(0, assign, members)
            counts = torch.bincount(assign, minlength=ipc).clamp_min(1).view(-1, 1, 1, 1)
            images.append(sums / counts)
            labels.append(torch.full((ipc,), c, dtype=torch.long))
        return self.make_synset(train, torch.cat(images), torch.cat(labels), ipc, seed)


@register_method("class_mean", config=CoresetConfig, paper="class-mean images (DD, Wang et al. 2018 baselines)",
                 year=2018, kind="coreset", default_eval="dc")
class ClassMean(Distiller):
    """The mean image of each class (IPC 1 only)."""

    def distill(self, train: RealDataset, ipc: int, *, seed: int = 0, run=None, progress: bool | None = None
               ) -> SyntheticSet:
        if ipc != 1:
            raise GendistillError("class_mean makes exactly one image per class; use --ipc 1")
        x = train.images()
        sums = torch.zeros(train.num_classes, *x.shape[1:]).index_add_(0, train.labels, x)
        means = sums / train.class_counts.clamp_min(1).view(-1, 1, 1, 1).float()
        return self.make_synset(train, means, torch.arange(train.num_classes), ipc, seed)
