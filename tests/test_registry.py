"""One parametrised test over the whole method registry, plus the shared run loop's resume and NaN checks."""

import dataclasses

import pytest
import torch

from gendistill.distiller import IterativeDistiller
from gendistill.presets import preset_file, resolve_config
from gendistill.registry import _METHODS, get_method, list_methods, register_method
from gendistill.runs import RunDir
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import CheckpointError, GendistillError, NonFiniteLossError


def tiny_config(name: str):
    """The method's ``configs/<method>/smoke.yaml``: settings that run in seconds on the tiny dataset."""
    return resolve_config(name, "tiny", 2, preset="smoke")


def test_every_method_has_a_smoke_preset():
    missing = [n for n in list_methods() if preset_file(n, "tiny", 2, "smoke") is None]
    assert not missing


@pytest.mark.parametrize("name", list_methods())
def test_every_method_distills_a_valid_set(name, tiny_train):
    info = get_method(name)
    ipc = 1 if name == "class_mean" else 2
    syn = info.cls(tiny_config(name)).distill(tiny_train, ipc, seed=0)
    assert isinstance(syn, SyntheticSet)
    assert syn.images.shape[1:] == (1, 16, 16) and syn.ipc == ipc and len(syn) == 10 * ipc
    assert torch.equal(torch.bincount(syn.hard_labels(), minlength=10), torch.full((10,), ipc))
    assert syn.meta["method"] == name and syn.meta["dataset"] == "tiny"
    assert torch.isfinite(syn.images).all()
    assert syn.preprocessing.same_space(tiny_train.preprocessing)
    again = info.cls(tiny_config(name)).distill(tiny_train, ipc, seed=0)
    assert torch.equal(again.images, syn.images), "same seed must give the same set"


def test_selection_methods_pick_real_images_of_the_right_class(tiny_train):
    for name in ("random", "herding", "kcenter"):
        syn = get_method(name).cls(tiny_config(name)).distill(tiny_train, 3, seed=1)
        idx = syn.source_indices
        assert torch.equal(tiny_train.labels[idx], syn.labels) and len(set(idx.tolist())) == 30
        assert torch.equal(tiny_train.images(idx), syn.images)


@pytest.mark.parametrize("name", ["random", "herding", "kcenter", "kmeans"])
def test_candidates_per_class_restricts_the_selection_to_a_seeded_pool(tiny_train, name):
    """A seeded candidate pool (reduced, labelled): every chosen image comes from it, the pool depends only on the
    seed, and the budget record names the reduction."""
    from gendistill.distiller import budget_fields
    from gendistill.methods.coreset import candidate_indices
    from gendistill.presets import budget_reductions, effective_budget

    info = get_method(name)
    config = dataclasses.replace(tiny_config(name), candidates_per_class=5)
    pools = candidate_indices(tiny_train, config, seed=1)
    assert [len(p) for p in pools] == [5] * 10 and all(bool((tiny_train.labels[p] == c).all())
                                                       for c, p in enumerate(pools))
    assert all(torch.equal(a, b) for a, b in zip(pools, candidate_indices(tiny_train, config, seed=1), strict=True))
    if name == "kmeans":  # 5 clusters of the 5 candidates: each centroid is one pool image
        syn = info.cls(config).distill(tiny_train, 5, seed=1)
        pool_images = tiny_train.images(torch.cat(pools)).flatten(1)
        assert float(torch.cdist(syn.images.flatten(1), pool_images,
                                 compute_mode="donot_use_mm_for_euclid_dist").min(1).values.max()) < 1e-4
    else:
        syn = info.cls(config).distill(tiny_train, 3, seed=1)
        assert set(syn.source_indices.tolist()) <= set(torch.cat(pools).tolist())
    full = dataclasses.replace(config, candidates_per_class=0)
    reductions = budget_reductions(effective_budget(name, config, tiny_train, 3),
                                   effective_budget(name, full, tiny_train, 3), budget_fields(type(config)))
    assert any("candidates_per_class" in r for r in reductions)
    with pytest.raises(GendistillError, match="candidates_per_class"):
        info.cls(config).distill(tiny_train, 6, seed=1)


def test_herding_matches_greedy_mean_definition():
    from gendistill.methods.coreset import Herding

    feats = torch.tensor([[0.0], [10.0], [4.0], [6.0], [5.2]])
    picks = Herding.select(None, feats, 3, torch.Generator()).tolist()
    assert picks[0] == 4  # closest to the mean 5.04
    assert sorted(picks[1:]) == [2, 3]  # then the pair that keeps the running mean at the class mean


def test_ipc_errors(tiny_train):
    with pytest.raises(GendistillError, match="exceeds"):
        get_method("random").cls(tiny_config("random")).distill(tiny_train, 50)
    with pytest.raises(GendistillError, match="--ipc 1"):
        get_method("class_mean").cls(tiny_config("class_mean")).distill(tiny_train, 2)
    with pytest.raises(GendistillError, match="available: .*random"):
        get_method("nosuch")


# ------------------------------------------------------------------------------------ shared run loop
@dataclasses.dataclass
class ToyConfig:
    iterations: int = 6
    lr: float = 0.5
    batch_real: int = 4
    device: str = "cpu"
    fail_at: int = -1
    nan: bool = False


class ToyMeanMatching(IterativeDistiller):
    """Moves synthetic images toward random real-batch means (exercises the generator and optimizer state)."""

    def init_state(self, train, ipc, generator, seed):
        x, _ = train.sample_all_classes(ipc, generator)
        images = x.clone().requires_grad_(True)
        opt = torch.optim.SGD([images], lr=self.config.lr, momentum=0.5)
        return {"images": images, "opt": opt.state_dict()}

    def step(self, it, state, train, generator, seed):
        if it == self.config.fail_at:
            raise KeyboardInterrupt
        images = state["images"]
        if not images.requires_grad:
            images.requires_grad_(True)
        opt = torch.optim.SGD([images], lr=self.config.lr, momentum=0.5)
        opt.load_state_dict(state["opt"])
        real, _ = train.sample_all_classes(self.config.batch_real, generator)
        c = train.num_classes
        loss = ((real.view(c, -1).mean(1) - images.view(c, -1).mean(1)) ** 2).sum()
        if self.config.nan:
            loss = loss * float("nan")
        opt.zero_grad()
        loss.backward()
        opt.step()
        state["opt"] = opt.state_dict()
        return {"loss": loss.detach()}

    def finalize(self, state, train, ipc, seed):
        return self.make_synset(train, state["images"], torch.arange(train.num_classes).repeat_interleave(ipc), ipc,
                                seed)


@pytest.fixture
def toy_method():
    register_method("_toy", config=ToyConfig, paper="test", year=2024, kind="pixel")(ToyMeanMatching)
    yield ToyMeanMatching
    _METHODS.pop("_toy", None)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, tiny_train, toy_method):
    full = toy_method(ToyConfig()).distill(tiny_train, 1, seed=4, run=RunDir(tmp_path / "a", checkpoint_every=2))
    with pytest.raises(KeyboardInterrupt):
        toy_method(ToyConfig(fail_at=5)).distill(tiny_train, 1, seed=4, run=RunDir(tmp_path / "b",
                                                                                   checkpoint_every=2))
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    resumed = toy_method(ToyConfig()).distill(tiny_train, 1, seed=4, run=RunDir(tmp_path / "b", resume=True,
                                                                              checkpoint_every=2))
    assert torch.equal(full.images, resumed.images)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert lines and '"iteration"' in lines[-1]


def test_resume_refuses_other_runs_checkpoints(tmp_path, tiny_train, toy_method):
    with pytest.raises(KeyboardInterrupt):
        toy_method(ToyConfig(fail_at=3)).distill(tiny_train, 1, seed=4, run=RunDir(tmp_path / "b",
                                                                                   checkpoint_every=2))
    with pytest.raises(CheckpointError, match="another run"):
        toy_method(ToyConfig()).distill(tiny_train, 1, seed=5, run=RunDir(tmp_path / "b", resume=True))
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match="corrupt"):
        toy_method(ToyConfig()).distill(tiny_train, 1, seed=4, run=RunDir(tmp_path / "b", resume=True))


def test_nan_loss_stops_with_advice(tmp_path, tiny_train, toy_method):
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        toy_method(ToyConfig(nan=True)).distill(tiny_train, 1, seed=0, run=RunDir(tmp_path / "n", log_every=1))
