"""DATM: soft cross-entropy, label initialisation and image selection on hand-made experts, the difficulty
window, skipped updates, and evaluation under the ``datm`` protocol."""

import dataclasses

import pytest
import torch
from torch import nn

from gendistill.baselines.base import initial_images
from gendistill.baselines.trajectory.buffers import train_buffers
from gendistill.baselines.trajectory.datm import (
    DATMConfig,
    DifficultyAlignedTrajectoryMatching,
    expert_logits,
    initial_soft_labels,
    select_correctly_classified,
    soft_cross_entropy,
)
from gendistill.baselines.trajectory.mtt import FlatNetwork
from gendistill.data.datasets import RealDataset
from gendistill.data.preprocessing import Preprocessing
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import default_protocol
from gendistill.nn.nets import create_network
from gendistill.runs import RunDir
from gendistill.utils.errors import ConfigError
from gendistill.utils.seeding import make_generator

I3 = torch.eye(3)
CYCLE = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])  # logits [x2, x0, x1]
TINY = dict(iterations=2, syn_steps=2, expert_epochs=1, max_start_epoch=1, buffer_experts=2, buffer_epochs=2,
            buffer_batch=8, buffer_lr=0.05, model="convnet_w8")


def linear_student():
    return FlatNetwork(nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False)))


def test_soft_cross_entropy():
    out = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([[0.0, 1.0, 0.0]])
    expected = -(torch.softmax(y, 1) * torch.log_softmax(out, 1)).sum()
    assert soft_cross_entropy(out, y).item() == pytest.approx(expected.item())
    assert soft_cross_entropy(out, torch.tensor([[50.0, 0.0, 0.0]])).item() == pytest.approx(
        torch.nn.functional.cross_entropy(out, torch.tensor([0])).item(), abs=1e-6)


def test_label_initialisation_on_hand_made_experts():
    experts = [I3.reshape(-1), 2 * I3.reshape(-1), CYCLE.reshape(-1)]
    x = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0], [0.5, 0.2, 0.1]]).view(5, 1, 1, 3)
    y = torch.tensor([0, 1, 1, 2, 2])
    labels, count = initial_soft_labels(linear_student(), experts, x, y)
    assert count.tolist() == [2, 1, 0, 1, 0]
    assert torch.allclose(labels[0], torch.tensor([1.5, 0, 0]))  # mean of I and 2I, the two correct experts
    assert torch.allclose(labels[1], torch.tensor([0.0, 1, 0]))  # only the cyclic expert is correct
    assert torch.allclose(labels[3], torch.tensor([0.0, 0, 1]))
    # no expert correct: the mean label of the class's correctly classified images (argmax kept) ...
    assert torch.allclose(labels[2], labels[1]) and torch.allclose(labels[4], labels[3])
    assert labels.argmax(1).tolist() == y.tolist()
    # ... or, when the class has none, the mean logits of all experts
    alone, count = initial_soft_labels(linear_student(), experts, x[2:3], y[2:3])
    assert count.tolist() == [0] and torch.allclose(alone[0], torch.tensor([1 / 3, 0, 1]))


def test_images_are_chosen_among_correctly_classified_ones():
    one_hot = {"a": [255, 0, 0], "b": [0, 255, 0], "c": [0, 0, 255]}
    per_class = [["a", "a", "b", "c"], ["b", "b", "b", "a"], ["a", "a", "b", "b"]]
    pixels = torch.tensor([one_hot[k] for row in per_class for k in row], dtype=torch.uint8).view(12, 1, 1, 3)
    labels = torch.arange(3).repeat_interleave(4)
    train = RealDataset(pixels, labels, ["0", "1", "2"], Preprocessing((0.0,), (1.0,)), "hand", "train")
    experts = [I3.reshape(-1), CYCLE.reshape(-1)]
    idx, fallback = select_correctly_classified(train, 3, linear_student(), experts, torch.Generator().manual_seed(0),
                                                torch.device("cpu"), batch=2)
    chosen = [sorted(idx[3 * c : 3 * c + 3].tolist()) for c in range(3)]
    assert chosen[0] == [0, 1, 3]  # two "a" right under expert 0, then the "c" that the next expert gets right
    assert chosen[1] == [4, 5, 6]  # the three "b" (expert 0)
    assert set(chosen[2]) >= {10, 11} and fallback == {2: 1}  # two via expert 1, one without any expert
    assert torch.equal(train.labels[idx], torch.arange(3).repeat_interleave(3))


def test_difficulty_window_grows_then_stays():
    cfg = DATMConfig(min_start_epoch=0, current_max_start_epoch=10, max_start_epoch=20, expansion_end_epoch=1000)
    method = DifficultyAlignedTrajectoryMatching(cfg)
    assert [method.start_window(it) for it in (0, 500, 1000, 5000)] == [(0, 10), (0, 15), (0, 20), (0, 20)]
    flat = DifficultyAlignedTrajectoryMatching(dataclasses.replace(cfg, sequential_generation=False))
    assert flat.start_window(0) == (0, 20)


def test_updates_above_the_threshold_are_skipped(tiny_train):
    skip = DifficultyAlignedTrajectoryMatching(DATMConfig(**TINY, threshold=0.0)).distill(tiny_train, 2,
                                                                                         progress=False)
    keep = DifficultyAlignedTrajectoryMatching(DATMConfig(**TINY, threshold=10.0)).distill(tiny_train, 2,
                                                                                          progress=False)
    assert skip.meta["skipped_updates"] == 2 and keep.meta["skipped_updates"] == 0
    assert skip.lr == pytest.approx(0.01) and keep.lr != pytest.approx(0.01)
    assert not torch.equal(skip.images, keep.images) and not torch.equal(skip.labels, keep.labels)
    assert skip.meta["init_fallback"] == {} and skip.meta["initial_label_accuracy"] == 1.0
    assert skip.soft and skip.labels.shape == (20, 10) and default_protocol(skip) == "datm"


def test_datm_set_evaluates_with_soft_labels_and_its_lr(tiny_train, tiny_test):
    syn = DifficultyAlignedTrajectoryMatching(DATMConfig(**TINY, grad="tesla")).distill(tiny_train, 1,
                                                                                       progress=False)
    result = evaluate(syn, tiny_test, runs=1, epochs=2, progress=False)
    p = result.protocol
    assert p["name"] == "datm" and p["label_loss"] == "soft_ce" and p["lr_from_synset"] and p["batch_size"] == 128
    assert result.synset["label_kind"] == "soft" and 0 <= result.mean <= 100


def test_expert_logits_run_the_network_in_eval_mode():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False), nn.BatchNorm1d(3))
    student = FlatNetwork(net)
    params = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    x = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]]).view(4, 1, 1, 3)
    out = expert_logits(student, params, x)
    # BatchNorm in eval mode: the fresh running statistics (mean 0, var 1), not the batch's
    assert torch.allclose(out, net[1](x.view(4, 3)).detach() / (1 + net[2].eps) ** 0.5)
    assert net.training and torch.equal(net[2].running_mean, torch.zeros(3))  # mode restored, stats untouched


def test_real_init_labels_are_the_raw_logits_of_expert_zero(tmp_path, tiny_train):
    buf = train_buffers(tiny_train, tmp_path / "buf", experts=2, epochs=2, model="convnet_w8", batch_size=32,
                        progress=False)
    cfg = DATMConfig(**{**TINY, "iterations": 0, "init": "real", "buffer": str(buf.path)})
    syn = DifficultyAlignedTrajectoryMatching(cfg).distill(tiny_train, 2, seed=5, progress=False)
    images = initial_images(tiny_train, 2, "real", make_generator(5))
    assert torch.equal(syn.images, images)
    student = FlatNetwork(create_network("convnet_w8", 1, 10, 16, seed=0))
    assert torch.allclose(syn.labels, expert_logits(student, buf.snapshot(0, 2), images), atol=1e-6)
    assert not torch.allclose(syn.labels[0], syn.labels[1])  # per image, not a class mean
    assert syn.meta["init"] == "real" and syn.meta["label_epoch"] == 2 and syn.meta["init_fallback"] == {}


@pytest.mark.parametrize("change,needle", [({"label_epoch": 3}, "label_epoch 3 is outside -3..2"),
                                           ({"label_epoch": -4}, "label_epoch -4 is outside"),
                                           ({"current_max_start_epoch": 0}, "must exceed min_start_epoch")])
def test_bad_datm_settings_are_refused_in_one_line(tiny_train, change, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        DifficultyAlignedTrajectoryMatching(DATMConfig(**{**TINY, **change})).distill(tiny_train, 1, progress=False)
    assert "\n" not in str(err.value)


def test_resume_restores_labels_their_optimizer_and_skips_exactly(tmp_path, tiny_train):
    cfg = DATMConfig(**{**TINY, "iterations": 4, "threshold": 0.987})  # losses ~0.990, 0.985, 0.990, 0.984
    full = DifficultyAlignedTrajectoryMatching(cfg).distill(tiny_train, 1, seed=1, run=RunDir(tmp_path / "a"),
                                                            progress=False)
    assert full.meta["skipped_updates"] == 2  # iterations 0 and 2 skipped, 1 and 3 applied

    class Stop(DifficultyAlignedTrajectoryMatching):
        def step(self, it, *args):
            if it == 3:
                raise KeyboardInterrupt
            return super().step(it, *args)

    Stop.name = "datm"
    with pytest.raises(KeyboardInterrupt):
        Stop(cfg).distill(tiny_train, 1, seed=1, run=RunDir(tmp_path / "b", checkpoint_every=2), progress=False)
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state"]
    assert saved["opt_y"]["state"] and "labels" in saved and "skipped" in saved  # the label momentum is stored
    resumed = DifficultyAlignedTrajectoryMatching(cfg).distill(
        tiny_train, 1, seed=1, progress=False, run=RunDir(tmp_path / "b", resume=True, checkpoint_every=2))
    assert torch.equal(resumed.labels, full.labels) and torch.equal(resumed.images, full.images)
    assert resumed.lr == full.lr and resumed.meta["skipped_updates"] == full.meta["skipped_updates"]
