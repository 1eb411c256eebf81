"""Set-quality report: metric functions on sets with known answers, the shared feature module, the CLI."""

import json
import math

import pytest
import torch

from gendistill.evaluation.features import FeatureSpec, reference_network
from gendistill.evaluation.metrics import (
    frechet_distance,
    mean_pairwise_distance,
    minimax_quantities,
    prdc,
    set_quality,
)
from gendistill.synset.format import SyntheticSet

TINY_SPEC = FeatureSpec(model="convnet_w8", epochs=1)


def test_prdc_of_real_data_against_itself_is_one():
    real = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    out = prdc(real, real.clone(), k=5)
    assert out["precision"] == pytest.approx(1.0) and out["recall"] == pytest.approx(1.0)
    assert out["coverage"] == pytest.approx(1.0)
    assert out["density"] == pytest.approx(1.0, abs=0.15)  # each point sits in ~k balls


def test_prdc_of_one_repeated_sample_has_no_recall_and_far_sets_score_zero():
    real = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    repeated = real[:1].repeat(20, 1)
    out = prdc(real, repeated, k=5)
    assert out["recall"] == pytest.approx(0.0) and out["precision"] == pytest.approx(1.0)
    assert out["coverage"] < 0.05  # only the balls of that point and its reverse neighbours contain it
    far = prdc(real, real[:50] + 100.0, k=5)
    assert far["precision"] == far["density"] == far["coverage"] == 0.0


def test_prdc_matches_a_hand_computed_example():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    fake = torch.tensor([[0.5], [9.0], [20.0]])
    # k = 1: real radii 1, 1, 1, 8; fake radii 8.5, 8.5, 11
    out = prdc(real, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 3)  # 0.5 inside balls of 0 and 1; 9 inside the ball of 10
    assert out["density"] == pytest.approx(3 / 3)  # 0.5 in 2 balls, 9 in 1, 20 in none
    assert out["coverage"] == pytest.approx(3 / 4)  # real 2 has its nearest fake at 1.5 > 1
    assert out["recall"] == pytest.approx(1.0)


def test_diversity_minimax_quantities_and_frechet():
    assert mean_pairwise_distance(torch.ones(5, 3)) == 0.0
    assert mean_pairwise_distance(torch.tensor([[0.0], [3.0]])) == pytest.approx(3.0)
    q = minimax_quantities(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert q["repr_max"] == pytest.approx(1.0 / 2 + math.sqrt(0.5) / 2)
    assert q["repr_min"] == pytest.approx(math.sqrt(0.5) / 2 + 0.0 / 2)
    assert q["div_max"] == pytest.approx(0.0)
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(2))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, x + 2.0) == pytest.approx(12.0, rel=1e-6)  # |mean shift|^2 = 3 * 4


def _set_of(train, idx, method="random"):
    return SyntheticSet(train.images(idx), train.labels[idx], train.class_names, train.preprocessing,
                        meta={"method": method, "dataset": train.name})


def test_report_of_real_images_versus_one_repeated_image(tiny_train, tmp_path):
    real_set = _set_of(tiny_train, torch.arange(len(tiny_train)))  # the whole split (12 per class)
    rep = set_quality(real_set, tiny_train, real_per_class=12, cache_dir=tmp_path)
    s = rep["summary"]
    assert s["precision"] == pytest.approx(1.0) and s["recall"] == pytest.approx(1.0)
    assert s["diversity"] == pytest.approx(s["diversity_random_real"])
    assert 0 <= s["agreement"] <= 1 and len(rep["per_class"]) == 10
    assert rep["record"]["feature_network"]["recipe"]["model"] == "convnet"
    one = tiny_train.class_index[:, :1].reshape(-1).repeat_interleave(6)
    collapsed = set_quality(_set_of(tiny_train, one), tiny_train, real_per_class=6, cache_dir=tmp_path)
    assert collapsed["summary"]["recall"] == pytest.approx(0.0) and collapsed["summary"]["diversity"] == 0.0
    assert collapsed["summary"]["feature_div_max"] == pytest.approx(1.0)
    assert "reference-tiny" in collapsed["record"]["feature_network"]["cache"] or \
        collapsed["record"]["feature_network"]["cache"] == "memory"


def test_report_accepts_soft_labels(tiny_train, tmp_path):
    idx = tiny_train.sample_indices(2, torch.Generator().manual_seed(0)).reshape(-1)
    soft = torch.nn.functional.one_hot(tiny_train.labels[idx], 10).float() * 3.0
    syn = SyntheticSet(tiny_train.images(idx), soft, tiny_train.class_names, tiny_train.preprocessing,
                       meta={"method": "x"})
    rep = set_quality(syn, tiny_train, real_per_class=6, cache_dir=tmp_path)
    assert rep["record"]["soft_labels"] and math.isnan(rep["summary"]["class_recall"])  # 2 < k + 1 per class
    assert not math.isnan(rep["summary"]["recall"])


def test_reference_network_is_cached_on_disk(tiny_train, tmp_path):
    net, rec = reference_network(tiny_train, spec=TINY_SPEC, cache_dir=tmp_path / "c")
    assert "trained, saved" in rec["cache"]
    from gendistill.evaluation import features

    features._MEMORY.clear()
    net2, rec2 = reference_network(tiny_train, spec=TINY_SPEC, cache_dir=tmp_path / "c")
    assert rec2["cache"].endswith(".safetensors")
    x = tiny_train.images()[:4]
    assert torch.allclose(net(x), net2(x))
    other, rec3 = features.cached_feature_network(tiny_train, TINY_SPEC, 7, cache_dir=tmp_path / "c")
    assert rec3["seed"] == 7 and "saved" in rec3["cache"] and not torch.allclose(other(x), net(x))
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2  # one file per seed
    features.cached_feature_network(tiny_train, TINY_SPEC, 8, cache_dir=tmp_path / "c", role="teacher-convnet")
    assert sorted(p.name.split("-" + tiny_train.name)[0] for p in (tmp_path / "c").glob("*.safetensors")) == [
        "reference", "seed7", "teacher-convnet-seed8"]  # a file says what it holds


def test_metrics_cli_end_to_end(data_env, tmp_path, capsys):
    from gendistill.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "2", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["metrics", "--synset", str(out), "--json", str(tmp_path / "m.json"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "precision" in text and "coverage" in text
    rep = json.loads((tmp_path / "m.json").read_text())
    assert rep["record"]["method"] == "random" and "summary" in rep
    assert main(["metrics", "--synset", str(tmp_path / "missing")]) != 0


def test_distill_metrics_flag_fills_the_result_table(data_env, tmp_path, capsys):
    from gendistill.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "2", "--out", str(out), "--quiet",
                 "--metrics", "--eval", "dc", "--eval-epochs", "1", "--eval-runs", "1"]) == 0
    assert (out / "quality.json").is_file()
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    header, _, row = table.splitlines()[:3]
    assert "coverage" in header and "agreement" in header
    cov = json.loads((out / "quality.json").read_text())["summary"]["coverage"]
    assert f"{cov:.3f}" in row


def test_reference_cache_goes_next_to_the_data_or_to_the_user_cache_when_read_only(data_env, tmp_path):
    import os

    from gendistill.data.datasets import load_dataset
    from gendistill.evaluation.features import default_cache_dir

    train = load_dataset("mnist").train
    assert default_cache_dir(train) == data_env / ".gendistill_cache" / "features"
    os.chmod(data_env, 0o555)
    try:
        if os.access(data_env, os.W_OK):
            pytest.skip("running as a user that can write anywhere")
        assert default_cache_dir(train) == tmp_path / "cache" / "gendistill" / "features"
    finally:
        os.chmod(data_env, 0o755)
    assert default_cache_dir(train.subset(torch.arange(3))) is None  # an in-memory dataset: no disk cache


def test_report_embeds_its_real_sample_once_per_process_and_never_mixes_datasets(tiny_train, tmp_path, monkeypatch):
    """Many reports against one split embed the real sample once; a split with the same name and size but other
    pixels (another data root) gets its own sample, not the cached one."""
    from gendistill.data.datasets import RealDataset
    from gendistill.evaluation import metrics

    calls = []
    real_embed = metrics.embed
    monkeypatch.setattr(metrics, "embed", lambda net, x, **kw: calls.append(len(x)) or real_embed(net, x, **kw))
    metrics._REAL_SAMPLES.clear()
    syn = _set_of(tiny_train, tiny_train.class_index[:, :2].reshape(-1))
    first = set_quality(syn, tiny_train, real_per_class=6, cache_dir=tmp_path)
    second = set_quality(syn, tiny_train, real_per_class=6, cache_dir=tmp_path)
    assert calls == [60, 20, 20] and first["summary"] == second["summary"]  # real sample once, the set each time
    other = RealDataset(255 - tiny_train.pixels, tiny_train.labels, tiny_train.class_names, tiny_train.preprocessing,
                        tiny_train.name, tiny_train.split)
    third = set_quality(_set_of(other, other.class_index[:, :2].reshape(-1)), other, real_per_class=6,
                        cache_dir=tmp_path / "other")
    assert calls[3] == 60 and third["summary"]["fd"] != first["summary"]["fd"]
