"""Protocol and method fidelity against the reference code (DC's per-dataset evaluation, default protocols,
CAFE's loop, DD's init and batches, DC's BatchNorm handling, multi-distillation reporting)."""

import dataclasses
import json

import pytest
import torch
from test_registry import tiny_config

from gendistill.cli import main
from gendistill.data.datasets import RealDataset
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import (
    PROTOCOLS,
    EvalProtocol,
    dc_augmentation_for,
    default_protocol,
    get_protocol,
    resolve_protocol,
)
from gendistill.registry import get_method, list_methods
from gendistill.synset.format import SyntheticSet


def _renamed(ds: RealDataset, name: str, flip_ok: bool = True) -> RealDataset:
    return RealDataset(ds.pixels, ds.labels, ds.class_names, ds.preprocessing, name, ds.split, flip_ok)


def _synset(train, method="random", per_class=2):
    idx = train.sample_indices(per_class, torch.Generator().manual_seed(0)).reshape(-1)
    return SyntheticSet(train.images(idx), train.labels[idx], train.class_names, train.preprocessing,
                        meta={"method": method, "dataset": train.name})


# ---------------------------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("dataset,model,aug,epochs", [
    ("mnist", "convnet", "crop_scale_rotate", 1000),
    ("fashion_mnist", "convnet", "", 300),
    ("cifar10", "convnet", "", 300),
    ("fashion_mnist", "convnet_bn", "crop_noise", 1000),
    ("mnist", "convnet_bn", "crop_noise", 1000),
    ("mnist", "resnet18", "crop_scale_rotate", 1000),
])
def test_dc_protocol_follows_dc_per_dataset_rule(dataset, model, aug, epochs):
    p = resolve_protocol(dataclasses.replace(get_protocol("dc"), model=model), dataset)
    assert (p.dc_aug, p.epochs) == (aug, epochs)
    assert dc_augmentation_for(dataset, model) == aug


def test_cafe_preset_and_dc_mnist_alias():
    cafe = get_protocol("cafe")
    assert resolve_protocol(cafe, "fashion_mnist").epochs == 600
    assert resolve_protocol(cafe, "cifar10").dc_aug == ""
    assert (resolve_protocol(cafe, "mnist").dc_aug, resolve_protocol(cafe, "mnist").epochs) == \
        ("crop_scale_rotate", 1000)
    assert get_protocol("dc_mnist") == get_protocol("dc") and "dc_mnist" not in PROTOCOLS


def test_result_records_the_resolved_recipe(tiny_train, tiny_test):
    mnist_train, mnist_test = _renamed(tiny_train, "mnist", False), _renamed(tiny_test, "mnist", False)
    syn = _synset(mnist_train)
    res = evaluate(syn, mnist_test, "dc", model="convnet_w8", epochs=2, runs=1, progress=False)
    assert res.protocol["dc_aug"] == "crop_scale_rotate" and res.protocol["dc_aug_rule"]
    assert res.reduced and "of 1000" in res.reduced_note
    fashion = evaluate(_synset(tiny_train), tiny_test, "dc", model="convnet_w8", epochs=2, runs=1, progress=False)
    assert fashion.protocol["dc_aug"] == "" and "of 300" in fashion.reduced_note
    # the recorded DSA strategy is the one that ran: no flip for digits
    dsa = evaluate(syn, mnist_test, "dsa", model="convnet_w8", epochs=1, runs=1, progress=False)
    assert "flip" not in dsa.protocol["dsa_strategy"] and "crop" in dsa.protocol["dsa_strategy"]
    with_flip = evaluate(_synset(tiny_train), tiny_test, "dsa", model="convnet_w8", epochs=1, runs=1,
                         progress=False)
    assert "flip" in with_flip.protocol["dsa_strategy"]


EXPECTED_DEFAULTS = {"dm": "dsa", "dsa": "dsa", "cafe_dsa": "dsa", "dc": "dc", "cafe": "cafe", "dd": "dd",
                     "random": "dc", "herding": "dc", "kcenter": "dc", "kmeans": "dc", "class_mean": "dc"}


@pytest.mark.parametrize("name", list_methods())
def test_default_protocol_is_the_methods_own(name, tiny_train):
    info = get_method(name)
    if name in EXPECTED_DEFAULTS:
        assert info.default_eval == EXPECTED_DEFAULTS[name]
    from gendistill.evaluation.protocols import CUSTOM_EVALUATORS

    assert info.default_eval in PROTOCOLS or info.default_eval in CUSTOM_EVALUATORS
    assert default_protocol(_synset(tiny_train, method=name)) == info.default_eval


def test_evaluate_without_protocol_uses_the_method_default(tiny_train, tiny_test):
    res = evaluate(_synset(tiny_train, method="dm"), tiny_test, model="convnet_w8", epochs=1, runs=1,
                   progress=False)
    assert res.protocol["name"] == "dsa" and res.protocol_source == "default of method dm"
    unknown = _synset(tiny_train, method="someone-elses")
    assert default_protocol(unknown) == "dc"


# ------------------------------------------------------------------------------------------------- CAFE
def test_cafe_updates_images_against_a_network_in_training(tiny_train, monkeypatch):
    """distill.py's order: update -> (stable? stop) -> train epochs until fluctuation -> update -> ..."""
    from gendistill.baselines.cafe import CAFE

    events = []
    accs = iter([0.1, 0.5, 0.1, 0.5, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5] * 10)
    monkeypatch.setattr(CAFE, "_real_accuracy", lambda self, net, train, gen: next(accs))
    orig_update, orig_epoch = CAFE.update_images, CAFE._inner_epoch

    def spy_update(self, state, loss):
        events.append("update")
        return orig_update(self, state, loss)

    def spy_epoch(self, net, *a, **k):
        events.append(("epoch", net))  # the object, not its id: ids of freed objects get reused
        return orig_epoch(self, net, *a, **k)

    monkeypatch.setattr(CAFE, "update_images", spy_update)
    monkeypatch.setattr(CAFE, "_inner_epoch", spy_epoch)
    cfg = dataclasses.replace(tiny_config("cafe"), iterations=1, window=2, max_outer=0, max_inner=0,
                              lambda_outer=0.04, lambda_inner=0.03)
    CAFE(cfg).distill(tiny_train, 1, seed=0)
    # accs: update#1 -> 0.1 (window 1: no check) -> inner: 0.5, 0.1 (range 0.4 > 0.03: stop after 2 epochs)
    # -> update#2 -> 0.5: outer window [0.1, 0.5] unstable -> inner: 0.1, 0.5 -> update#3 -> 0.5: window
    # [0.5, 0.5] stable -> iteration ends
    kinds = [e if e == "update" else "epoch" for e in events]
    assert kinds == ["update", "epoch", "epoch", "update", "epoch", "epoch", "update"]
    nets = {id(e[1]) for e in events if e != "update"}
    assert len(nets) == 1  # one network per outer iteration, trained across inner phases


def test_cafe_iterations_count_outer_iterations_and_lr_milestones(tiny_train):
    from gendistill.baselines.cafe import CAFE

    cfg = dataclasses.replace(tiny_config("cafe"), iterations=3, max_outer=2, max_inner=1, milestones=(1, 2))
    method = CAFE(cfg)
    assert [method._image_lr(it) for it in range(3)] == [0.1, 0.05, 0.025]
    syn = method.distill(tiny_train, 1, seed=0)
    assert syn.meta["iterations"] == 3


# --------------------------------------------------------------------------------------------------- DD
def test_dd_real_batches_are_epoch_permutations_and_steplr_steps_first(tiny_train):
    from gendistill.baselines.dd import DatasetDistillation

    cfg = dataclasses.replace(tiny_config("dd"), iterations=0, epochs=3, batch_real=50, decay_epochs=1,
                              lr_img=0.01)
    method = DatasetDistillation(cfg)
    per_epoch = method.batches_per_epoch(tiny_train)
    assert per_epoch == 3 and method.total_iterations(tiny_train) == 9  # 120 images: 50 + 50 + 20
    for epoch in range(3):
        batches = [method.real_batch(epoch * 3 + b, tiny_train, seed=0) for b in range(3)]
        assert [len(b) for b in batches] == [50, 50, 20]
        assert sorted(torch.cat(batches).tolist()) == list(range(120))  # without replacement
    assert not torch.equal(method.real_batch(0, tiny_train, 0), method.real_batch(3, tiny_train, 0))
    # StepLR(step=1 epoch) is stepped before the first update of every epoch: epoch e runs at 0.5**(e+1)
    assert [method.image_lr(it, tiny_train) for it in (0, 2, 3, 8)] == pytest.approx([0.005, 0.005, 0.0025,
                                                                                      0.00125])


def test_dd_networks_use_xavier_init(tiny_train):
    from gendistill.baselines.dd import DatasetDistillation, dd_network

    net = dd_network("lenet", 1, 10, 28, seed=0)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0
    default = dd_network("lenet", 1, 10, 28, seed=0, init="default")
    assert any(torch.count_nonzero(m.bias) for m in default.modules() if isinstance(m, torch.nn.Linear))
    syn = DatasetDistillation(tiny_config("dd")).distill(tiny_train, 2, seed=0)
    assert syn.meta["dd_init"] == "xavier"


# ------------------------------------------------------------------------------------------- DC with BN
def test_dc_with_batchnorm_freezes_statistics_from_real_images(tiny_train, monkeypatch):
    from gendistill.baselines import dc
    from gendistill.baselines.dc import GradientMatching, freeze_batchnorm_statistics

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    gen = torch.Generator().manual_seed(0)
    freeze_batchnorm_statistics(net, tiny_train, 16, gen, torch.device("cpu"))
    bn = net[1]
    assert not bn.training and int(bn.num_batches_tracked) == 1  # one train-mode pass, then frozen
    before = bn.running_mean.clone()
    net(torch.randn(8, 1, 16, 16))
    assert torch.equal(bn.running_mean, before)  # matching forwards leave the statistics alone

    seen = []
    original = dc.per_class_gradients

    def spy(net, params, x, y, **kw):
        seen.append([m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
        return original(net, params, x, y, **kw)

    monkeypatch.setattr(dc, "per_class_gradients", spy)
    cfg = dataclasses.replace(tiny_config("dc"), model="convnet_w8_bn", iterations=1, bn_images_per_class=4)
    syn = GradientMatching(cfg).distill(tiny_train, 2, seed=0)
    assert torch.isfinite(syn.images).all() and seen
    assert all(not any(flags) for flags in seen)  # every matching forward ran with frozen BN statistics


# --------------------------------------------------------------------------------------- CLI and reports
def test_eval_and_export_accept_a_run_folder(tmp_path, data_env, capsys):
    run = tmp_path / "run"
    assert main(["--quiet", "distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out",
                 str(run)]) == 0
    capsys.readouterr()
    assert main(["--quiet", "eval", "--synset", str(run), "--runs", "1", "--epochs", "1", "--model",
                 "convnet_w8"]) == 0
    out = capsys.readouterr().out
    assert "protocol: dc (default of method random)" in out and "crop_scale_rotate" in out
    assert main(["--quiet", "export", "--synset", str(run), "--out", str(tmp_path / "png")]) == 0
    assert len(list((tmp_path / "png").rglob("*.png"))) == 10


def test_distill_eval_without_value_uses_method_default(tmp_path, data_env, capsys):
    assert main(["--quiet", "distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out",
                 str(tmp_path / "r"), "--eval", "--eval-runs", "1", "--eval-epochs", "1"]) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["protocol"]["name"] == "dc" and result["protocol_source"] == "default of method random"


def test_distill_seeds_report_pairs_and_across_distillation_std(tmp_path, data_env, capsys):
    out = tmp_path / "multi"
    assert main(["--quiet", "distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", str(out),
                 "--distill-seeds", "3", "--eval", "dc", "--eval-runs", "2", "--eval-epochs", "1"]) == 0
    summary = json.loads((out / "result.json").read_text())
    assert summary["distill_seeds"] == [0, 1, 2] and len(summary["accs"]) == 6
    per = [json.loads((out / f"seed_{s}" / "result.json").read_text()) for s in range(3)]
    assert summary["accs"] == [a for r in per for a in r["accs"]]
    import numpy as np

    assert summary["std"] == pytest.approx(float(np.std(summary["accs"])))
    assert summary["std_across_distillations"] == pytest.approx(float(np.std([r["mean"] for r in per])))
    assert "3 distillations × 2" in (out / "results.md").read_text()
    assert "across distillations" in capsys.readouterr().out


def test_aggregate_on_hand_made_results():
    from gendistill.pipeline import aggregate_distillations

    base = {"protocol": {"name": "dc"}, "reduced": False, "reduced_note": "", "wall_time_s": 1.0,
            "seconds_per_run": 0.5, "synset": {"method": "x"}}
    agg = aggregate_distillations([{**base, "mean": 90.0, "std": 1.0, "accs": [89.0, 91.0]},
                                   {**base, "mean": 94.0, "std": 1.0, "accs": [93.0, 95.0]}], [0, 1])
    assert agg["mean"] == pytest.approx(92.0) and agg["std_across_distillations"] == pytest.approx(2.0)
    assert agg["std"] == pytest.approx(float(torch.tensor([89.0, 91, 93, 95]).std(unbiased=False)))
    assert EvalProtocol  # the aggregate keeps the first protocol record
    assert agg["protocol"] == {"name": "dc"}


def test_explicit_epochs_survive_the_per_dataset_rule():
    p = resolve_protocol(get_protocol("dc", epochs=50), "mnist")
    assert (p.dc_aug, p.epochs) == ("crop_scale_rotate", 50)
    assert not get_protocol("dc", dc_aug="crop").dc_aug_rule  # an explicit augmentation replaces the rule


def test_effective_budget_resolves_automatic_values(tiny_train):
    from gendistill.data.datasets import DatasetSplits
    from gendistill.presets import preset_reductions, resolve_config

    splits = DatasetSplits(_renamed(tiny_train, "mnist"), _renamed(tiny_train, "mnist"))
    dc = resolve_config("dc", "mnist", 10, overrides=["outer_loop=10", "inner_loop=50"])
    assert preset_reductions("dc", splits, 10, dc, None) == []  # the reference loops, spelled out
    dc = resolve_config("dc", "mnist", 10, overrides=["outer_loop=2", "inner_loop=5"])
    assert preset_reductions("dc", splits, 10, dc, None) == ["outer_loop 2 < 10", "inner_loop 5 < 50"]
    dd = resolve_config("dd", "mnist", 10, overrides=["iterations=30000"])  # more than the computed 400 x 1
    assert preset_reductions("dd", splits, 10, dd, None) == []
    dd = resolve_config("dd", "mnist", 10, overrides=["iterations=3"])
    assert preset_reductions("dd", splits, 10, dd, None) == ["iterations 3 < 400"]


def test_resume_of_a_finished_run_returns_it_and_ignores_the_data_path(tmp_path, data_env, capsys):
    run = tmp_path / "r"
    assert main(["--quiet", "distill", "--method", "dm", "--dataset", "mnist", "--ipc", "1", "--out", str(run),
                 "--set", "iterations=2", "--set", "batch_real=4", "--set", "model=convnet_w8"]) == 0
    first = SyntheticSet.load(run)
    import yaml

    record = yaml.safe_load((run / "config.yaml").read_text())
    record["data"]["data_root"] = "/somewhere/else"  # the data moved: provenance does not block a resume
    (run / "config.yaml").write_text(yaml.safe_dump(record))
    assert main(["--quiet", "distill", "--out", str(run), "--resume", "--data-root", str(data_env)]) == 0
    assert torch.equal(SyntheticSet.load(run).images, first.images)
