"""``gendistill bench``: spec validation, a small matrix end to end, resume after a kill, failed cells, Ray."""

import json

import pytest
import yaml

from gendistill.bench import runner
from gendistill.bench.runner import collect_cells, robust_scores, run_bench
from gendistill.bench.spec import load_spec, parse_spec
from gendistill.cli import main
from gendistill.utils.errors import ConfigError

TINY_DM = {"name": "dm", "set": ["iterations=2", "batch_real=4", "model=convnet_w8"]}


def small_spec(**extra):
    data = {"name": "tiny", "methods": ["random", TINY_DM, {"name": "dc", "set": ["iterations=1"]}],
            "datasets": ["mnist"], "ipc": [1], "protocols": ["dc"], "eval_models": ["convnet_w8"], "runs": 1,
            "epochs": 1, **extra}
    return parse_spec(data)


@pytest.mark.parametrize("change,needle", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"datasets": ["imagenet1k"]}, "unknown dataset 'imagenet1k'"),
    ({"protocols": ["fancy"]}, "unknown protocol 'fancy'"),
    ({"eval_models": ["resnet999"]}, "unknown evaluation network"),
    ({"methods": [{"name": "dm", "preset": "nope"}]}, "no preset 'nope'"),
    ({"methods": [{"name": "dm", "sett": []}]}, "unknown key 'sett'"),
    ({"ipc": [0]}, "positive integers"),
    ({"network_epochs": {"lenet": 10}}, "which eval_models does not list"),
    ({"network_epochs": {"convnet_w8": 0}}, "network_epochs"),
    ({"teacher_epochs": 0}, "teacher_epochs"),
    ({"teacher_epochs": 2.5}, "teacher_epochs"),
    ({"eval_count": -1}, "eval_count"),
    ({"ipc": []}, "non-empty 'ipc'"),
])
def test_spec_validation_is_one_line(change, needle):
    base = {"methods": ["random"], "datasets": ["mnist"], "ipc": [1]}
    with pytest.raises(ConfigError, match=needle) as info:
        parse_spec({**base, **change})
    assert "\n" not in str(info.value)


def test_spec_expands_the_matrix_and_defaults_to_each_methods_protocol():
    spec = parse_spec({"methods": ["random", {"name": "dm", "preset": "cpu"}], "datasets": ["mnist"], "ipc": [1, 10],
                       "distill_seeds": 2, "eval_models": ["convnet", "lenet"]})
    cells = spec.distill_cells()
    assert len(cells) == 2 * 2 * 2 and len({c.id for c in cells}) == 8
    dm = next(c for c in cells if c.method.name == "dm")
    assert {e.protocol for e in spec.eval_cells(dm)} == {"dsa"} and len(spec.eval_cells(dm)) == 2
    rnd = next(c for c in cells if c.method.name == "random")
    assert {e.protocol for e in spec.eval_cells(rnd)} == {"dc", "dsa"}  # the reference: every protocol
    assert load_spec("cpu-mnist").name == "cpu-mnist"  # the packaged specs load
    for name in ("paper-mnist", "paper-fashion_mnist", "paper-cifar10"):
        assert len(load_spec(name).distill_cells()) >= 27


def test_every_packaged_spec_loads_and_the_label_regime_spec_pairs_both_regimes():
    from gendistill.presets import config_root

    names = sorted(p.stem for p in (config_root() / "bench").glob("*.yaml"))
    assert "generative-iv" in names
    for name in names:
        assert load_spec(name).distill_cells(), name
    spec = load_spec("generative-iv")
    for cell in spec.distill_cells():  # every set, generated or not, under hard labels and under the teacher
        assert {e.protocol for e in spec.eval_cells(cell)} == {"dsa", "teacher"}
    assert {c.method.label for c in spec.distill_cells()} >= {"random", "dm", "dit", "minimax", "mgd3", "igd",
                                                                "igd_minimax"}


def test_small_matrix_end_to_end_with_a_failed_cell(tmp_path, mnist_root, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec = small_spec(ipc=[1, 3])  # dc has no reference loops for ipc 3: that cell fails in one line
    spec_path.write_text(yaml.safe_dump({**spec.to_dict(), "distill_seeds": 1}))
    out = tmp_path / "bench"
    assert main(["--quiet", "bench", str(spec_path), "--out", str(out), "--data-root", str(mnist_root)]) == 1
    text = capsys.readouterr().out
    cells = json.loads((out / "cells.json").read_text())
    assert len(cells) == 6
    failed = [c for c in cells if c["status"] == "failed"]
    assert [c["cell"] for c in failed] == ["dc-iterations1_mnist_ipc3_s0__dc__convnet_w8"]
    assert "reference defines loops only" in failed[0]["error"] and "failed dc-iterations1" in text
    assert all(c["status"] == "done" for c in cells if c not in failed)
    done = next(c for c in cells if c["method"] == "dm" and c["ipc"] == 1)
    assert done["result"]["protocol"]["name"] == "dc" and done["distill_time_s"] > 0 and done["grid"]
    for name in ("leaderboard.md", "leaderboard.csv", "index.html"):
        assert (out / name).is_file()
    html = (out / "index.html").read_text()
    assert all(f'data-cell="{c["cell"]}"' in html for c in cells)
    # every cell is a normal run folder: eval and export accept it
    assert main(["--quiet", "eval", "--synset", str(out / "runs" / "dm-iterations2-batchreal4-modelconvnetw8_mnist"
                                                  "_ipc1_s0"), "--runs", "1", "--epochs", "1", "--model", "convnet_w8",
                 "--data-root", str(mnist_root)]) == 0
    assert main(["--quiet", "leaderboard", str(out)]) == 0


def test_kill_mid_matrix_then_rerun_does_only_what_is_missing(tmp_path, mnist_root, monkeypatch):
    spec = small_spec(methods=["random", TINY_DM, "kmeans"])
    out = tmp_path / "bench"
    original = runner.run_distill_cell
    calls = []

    def dies_on_second(spec_dict, index, *args, **kwargs):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the second cell runs
        return original(spec_dict, index, *args, **kwargs)

    monkeypatch.setattr(runner, "run_distill_cell", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_bench(spec, out, data_root=str(mnist_root), progress=False)
    monkeypatch.setattr(runner, "run_distill_cell", original)
    distilled = []
    from gendistill import pipeline

    real_distill = pipeline.distill

    def counting(method, *args, **kwargs):
        distilled.append(method)
        return real_distill(method, *args, **kwargs)

    monkeypatch.setattr(pipeline, "distill", counting)
    records = run_bench(spec, out, data_root=str(mnist_root), progress=False)
    assert distilled == ["dm", "kmeans"]  # the finished random cell was reused
    assert all(r["status"] == "done" for r in records)
    distilled.clear()
    run_bench(spec, out, data_root=str(mnist_root), progress=False)
    assert distilled == []  # a third run has nothing to do


def test_robust_scores_from_cells():
    def cell(method, protocol, mean, dsa=True):
        proto = {"name": protocol, "dsa_strategy": "crop" if dsa else "", "dc_aug": ""}
        return {"method": method, "dataset": "cifar10", "ipc": 10, "protocol": protocol, "eval_model": "convnet",
                "status": "done", "result": {"mean": mean, "std": 0.5, "protocol": proto}}

    cells = [cell("dm", "dsa", 50.0), cell("random", "dsa", 30.0), cell("dm", "dc", 45.0, dsa=False),
             cell("random", "dc", 25.0, dsa=False)]
    rows = robust_scores(cells, lambda dataset, net: 85.0)
    dsa_row = next(r for r in rows if r["protocol"] == "dsa")
    assert dsa_row["ior"] == pytest.approx(0.20) and dsa_row["hlr"] == pytest.approx(0.35)
    import math

    alpha = 0.5 * 0.20 - 0.5 * 0.35
    assert dsa_row["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    beta = 0.5 * (0.50 - 0.30) + 0.5 * (0.45 - 0.25)
    assert dsa_row["ars"] == pytest.approx((math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1)))


def test_label_regimes_pair_each_set_with_random_real_under_the_same_protocol(tmp_path):
    import math

    from gendistill.bench.leaderboard import write_leaderboard
    from gendistill.bench.runner import label_regime_rows

    def cell(method, protocol, mean, teacher=""):
        proto = {"name": protocol, **({"teacher": teacher, "label_loss": "kl"} if teacher else {})}
        return {"method": method, "dataset": "mnist", "ipc": 10, "protocol": protocol, "eval_model": "convnet",
                "status": "done", "result": {"mean": mean, "std": 0.5, "protocol": proto}}

    cells = [cell("minimax", "dsa", 90.0), cell("random", "dsa", 92.0), cell("minimax", "teacher", 95.0, "convnet"),
             cell("random", "teacher", 94.0, "convnet")]
    rows = {(r["method"], r["regime"]): r for r in label_regime_rows(cells, lambda dataset, net: 99.0)}
    assert rows["minimax", "hard"]["ior"] == pytest.approx(-2.0) and rows["minimax", "hard"]["lrs"] is None
    teacher = rows["minimax", "teacher"]
    assert teacher["ior"] == pytest.approx(1.0) and teacher["random"] == 94.0
    alpha = 0.5 * 0.01 - 0.5 * (0.99 - 0.90)  # HLR from the same set's hard-label accuracy
    assert teacher["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    write_leaderboard(cells, tmp_path, regimes=label_regime_rows(cells))
    page = (tmp_path / "leaderboard.md").read_text()
    assert "## Label regimes" in page
    assert "| minimax | mnist | 10 | convnet | teacher | teacher | 95.00 | 94.00 | +1.00" in page


def test_a_teacher_cells_recipe_shows_the_teachers_own_accuracy(tmp_path):
    from gendistill.bench.leaderboard import write_leaderboard

    proto = {"name": "teacher", "epochs": 100, "cutmix_prob": 1.0, "lr": 0.001, "teacher": "convnet"}
    cell = {"cell": "c", "method": "random", "dataset": "mnist", "ipc": 10, "protocol": "teacher",
            "eval_model": "convnet", "status": "done",
            "result": {"mean": 80.0, "std": 0.0, "accs": [80.0], "protocol": proto,
                       "teacher": {"test_accuracy": 88.61}}}
    write_leaderboard([cell], tmp_path)
    assert "teacher: 100 ep, cutmix p=1.0, lr 0.001, teacher 88.61 %" in (tmp_path / "leaderboard.md").read_text()
    assert "88.61" in (tmp_path / "leaderboard.csv").read_text().splitlines()[1]
    cell["result"]["autocast"] = "bf16"  # an evaluation under bfloat16 autocast says so in its recipe and the CSV
    write_leaderboard([cell], tmp_path)
    assert "teacher 88.61 %, bf16 autocast" in (tmp_path / "leaderboard.md").read_text()
    assert (tmp_path / "leaderboard.csv").read_text().splitlines()[1].endswith(",bf16")


def test_ray_dispatch_on_a_local_instance(tmp_path, mnist_root):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'gendistill[ray]')")
    spec = small_spec(methods=["random", TINY_DM])
    out = tmp_path / "bench"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        records = run_bench(spec, out, data_root=str(mnist_root), cluster="ray", progress=False)
    finally:
        ray.shutdown()
    assert [r["status"] for r in records] == ["done", "done"]
    assert collect_cells(spec, out) == records


def test_quickstart_starts_from_the_shipped_generator_else_pretrains_one(tmp_path, mnist_root, monkeypatch, capsys):
    from gendistill.generative import hub
    from gendistill.generative.ship import ship_model

    tiny = ("arch: custom-D2-W16-H2/4\nspace: pixel\nprediction: v_prediction\npretrain_steps: 2\n"
            "pretrain_batch_size: 8\nfinetune_steps: 2\nbatch_size: 4\nsample_steps: 3\ncheckpoint_every: 0\n"
            "log_every: 1\n")
    for method in ("minimax", "dit"):
        (tmp_path / "cfg" / method).mkdir(parents=True)
        (tmp_path / "cfg" / method / "quickstart.yaml").write_text(tiny)
    monkeypatch.setenv("GENDISTILL_CONFIGS", str(tmp_path / "cfg"))
    monkeypatch.setenv("GENDISTILL_DATA", str(mnist_root))
    monkeypatch.setattr(hub, "shipped_root", lambda: tmp_path / "shipped")  # none shipped: pretrain once, share
    out = tmp_path / "q"
    assert main(["--quiet", "quickstart", "--out", str(out), "--ipc", "1", "--epochs", "1", "--runs", "1",
                 "--methods", "dit,minimax"]) == 0
    assert "index.html" in capsys.readouterr().out
    model = out / "models" / "dit-mnist" / "model"
    assert (model / "gendistill.json").is_file()
    cells = json.loads((out / "cells.json").read_text())
    assert {c["method"]: c["status"] for c in cells} == {"dit": "done", "minimax": "done"}
    for c in cells:
        meta = json.loads((out / c["run_dir"] / "synset" / "synset.json").read_text())["meta"]
        assert meta["config"]["pretrained"] == str(model.resolve())
    assert "minimax" in (out / "index.html").read_text()
    ship_model(model, "tiny-mnist", quality_ipc=0, root=tmp_path / "shipped", overrides=["sample_steps=2"])
    assert main(["--quiet", "quickstart", "--out", str(tmp_path / "q2"), "--ipc", "1", "--epochs", "1", "--runs",
                 "1", "--methods", "minimax"]) == 0
    assert "shipped generator gendistill/tiny-mnist" in capsys.readouterr().out
    assert not (tmp_path / "q2" / "models").exists()
    cell = json.loads((tmp_path / "q2" / "cells.json").read_text())[0]
    meta = json.loads((tmp_path / "q2" / cell["run_dir"] / "synset" / "synset.json").read_text())["meta"]
    assert meta["config"]["pretrained"] == "gendistill/tiny-mnist"


def test_entries_narrow_datasets_and_sampling_seeds():
    spec = parse_spec({"methods": ["random", {"name": "dit", "sample_seeds": [0]},
                                   {"name": "minimax", "label": "mm", "datasets": ["fashion_mnist"]}],
                       "datasets": ["mnist", "fashion_mnist"], "ipc": [1], "sample_seeds": [0, 1, 2]})
    ids = {c.id for c in spec.distill_cells()}
    assert {i for i in ids if i.startswith("dit")} == {"dit_mnist_ipc1_s0_ss0", "dit_fashion_mnist_ipc1_s0_ss0"}
    assert {i for i in ids if i.startswith("mm")} == {f"mm_fashion_mnist_ipc1_s0_ss{k}" for k in range(3)}
    assert parse_spec(spec.to_dict()).distill_cells() == spec.distill_cells()
    with pytest.raises(ConfigError, match="do not include"):
        parse_spec({"methods": [{"name": "dm", "datasets": ["cifar10"]}], "datasets": ["mnist"], "ipc": [1]})
    with pytest.raises(ConfigError, match="list of integers"):
        parse_spec({"methods": [{"name": "dm", "sample_seeds": 3}], "datasets": ["mnist"], "ipc": [1]})


def test_an_entry_may_take_its_own_distillation_seeds():
    spec = parse_spec({"methods": [{"name": "random", "distill_seeds": [1, 2]},
                                   {"name": "dit", "sample_seeds": [0, 1]}], "datasets": ["mnist"], "ipc": [1]})
    assert [c.id for c in spec.distill_cells()] == ["random_mnist_ipc1_s1", "random_mnist_ipc1_s2",
                                                    "dit_mnist_ipc1_s0_ss0", "dit_mnist_ipc1_s0_ss1"]
    assert parse_spec(spec.to_dict()).distill_cells() == spec.distill_cells()
    with pytest.raises(ConfigError, match="distill_seeds of method entry 'random' must be a list of integers"):
        parse_spec({"methods": [{"name": "random", "distill_seeds": 2}], "datasets": ["mnist"], "ipc": [1]})


def test_cell_ids_are_unique_and_short():
    with pytest.raises(ConfigError, match="twice"):
        parse_spec({"methods": ["dm", {"name": "dm"}], "datasets": ["mnist"], "ipc": [1]})
    spec = parse_spec({"methods": [{"name": "dm", "set": ["lr_img=1e-3"]}, {"name": "dm", "set": ["lr_img=1e3"]},
                                   {"name": "dm", "set": ["pretrained=/a/very/long/path/to/some/model/folder"]}],
                       "datasets": ["mnist"], "ipc": [1]})
    ids = [c.id for c in spec.distill_cells()]
    assert len(set(ids)) == 3 and all(len(i) < 60 for i in ids)
    with pytest.raises(ConfigError, match="distill_seeds"):
        parse_spec({"methods": ["dm"], "datasets": ["mnist"], "ipc": [1], "distill_seeds": 0})
    with pytest.raises(ConfigError, match="runs"):
        parse_spec({"methods": ["dm"], "datasets": ["mnist"], "ipc": [1], "runs": "abc"})


def test_random_reference_is_evaluated_under_every_protocol_of_the_matrix():
    spec = parse_spec({"methods": ["random", "herding", "dm"], "datasets": ["mnist"], "ipc": [1]})
    rnd = next(c for c in spec.distill_cells() if c.method.name == "random")
    assert [e.protocol for e in spec.eval_cells(rnd)] == ["dc", "dsa"]


def test_changed_evaluation_settings_redo_the_evaluations(tmp_path, mnist_root):
    out = tmp_path / "bench"
    spec = small_spec(methods=["random"])
    first = run_bench(spec, out, data_root=str(mnist_root), progress=False, leaderboard=False)
    again = run_bench(small_spec(methods=["random"], runs=2), out, data_root=str(mnist_root), progress=False,
                      leaderboard=False)
    assert len(first[0]["result"]["accs"]) == 1 and len(again[0]["result"]["accs"]) == 2


def test_network_epochs_give_one_network_its_own_budget_and_keep_the_other_cells(tmp_path, mnist_root):
    """The per-network recipe (e.g. LeNet at 1000 epochs beside a 100-epoch table): that network's cells train for
    its epochs and record them; adding it later redoes only that network's cells."""
    out = tmp_path / "bench"
    base = {"methods": ["random"], "eval_models": ["convnet_w8", "mlp"], "protocols": ["dsa"]}
    first = run_bench(small_spec(**base), out, data_root=str(mnist_root), progress=False, leaderboard=False)
    spec = small_spec(**base, network_epochs={"mlp": 2})
    assert spec.epochs_for(1, "mlp") == 2 and spec.epochs_for(1, "convnet_w8") == 1
    again = run_bench(spec, out, data_root=str(mnist_root), progress=False, leaderboard=False)
    by_net = {r["eval_model"]: r for r in again}
    assert by_net["mlp"]["result"]["protocol"]["epochs"] == 2
    assert by_net["convnet_w8"]["result"]["protocol"]["epochs"] == 1
    assert by_net["mlp"]["result"]["bench_settings"]["epochs"] == 2
    kept = next(r for r in first if r["eval_model"] == "convnet_w8")
    assert by_net["convnet_w8"]["result"]["wall_time_s"] == kept["result"]["wall_time_s"]  # reused, not redone


def test_teacher_epochs_and_eval_count_key_only_the_cells_of_protocols_they_apply_to():
    """A reduced teacher (and fewer best-of tests) re-keys the teacher cells only: the hard-label cells of the same
    spec stay current, and evaluate receives the overrides only for the teacher protocol."""
    plain = small_spec(protocols=["dsa", "teacher"])
    spec = small_spec(protocols=["dsa", "teacher"], teacher_epochs=2, eval_count=5)
    assert spec.settings(1, "convnet_w8", "dsa") == plain.settings(1, "convnet_w8", "dsa")
    assert spec.settings(1, "convnet_w8", "teacher") == {**plain.settings(1, "convnet_w8", "teacher"),
                                                         "teacher_epochs": 2, "eval_count": 5}
    assert spec.overrides("teacher") == {"teacher_epochs": 2, "eval_count": 5} and spec.overrides("dsa") == {}


def test_generative_cells_share_trained_stages_and_vary_only_the_sampling_seed(data_env, tmp_path, monkeypatch):
    """sample_seeds: one set per seed from one trained model; shared_stages: cells that differ only in sampling
    (seed, guidance, IPC) pretrain and fine-tune once."""
    from gendistill.generative import method as gen_method

    trained = []
    real_train = gen_method.train_backbone

    def counting(backbone, train, class_ids, spec, out, **kw):
        trained.append((spec.stage, out.name))
        return real_train(backbone, train, class_ids, spec, out, **kw)

    monkeypatch.setattr(gen_method, "train_backbone", counting)
    spec = parse_spec({"name": "gen", "methods": [{"name": "minimax", "preset": "smoke"},
                                                  {"name": "minimax", "preset": "smoke", "set": ["cfg_scale=1.0"]},
                                                  "random"],
                       "datasets": ["mnist"], "ipc": [1, 2], "sample_seeds": [0, 1], "protocols": ["dsa"],
                       "eval_models": ["convnet_w8"], "runs": 1, "epochs": {1: 1, 2: 2}, "quality": False})
    assert len(spec.distill_cells()) == 2 * (2 * 2 + 1)  # random has no sampling seed
    records = run_bench(spec, tmp_path / "b", data_root=str(data_env), progress=False, leaderboard=False)
    assert all(r["status"] == "done" for r in records), [r["error"] for r in records if r["error"]]
    assert sorted(s for s, _ in trained) == ["finetune", "pretrain"]  # once for all 8 generative cells
    assert {r["result"]["protocol"]["epochs"] for r in records if r["ipc"] == 2} == {2}  # epochs per IPC

    from gendistill.synset.format import SyntheticSet

    runs = tmp_path / "b" / "runs"
    seed0 = SyntheticSet.load(runs / "minimax-smoke_mnist_ipc2_s0_ss0" / "synset")
    seed1 = SyntheticSet.load(runs / "minimax-smoke_mnist_ipc2_s0_ss1" / "synset")
    assert seed0.meta["sample_seed"] == 0 and seed1.meta["sample_seed"] == 1
    assert not seed0.images.allclose(seed1.images)
    small = SyntheticSet.load(runs / "minimax-smoke_mnist_ipc1_s0_ss0" / "synset")  # per-image seeds: a prefix
    assert small.images.allclose(seed0.images.view(10, 2, *seed0.images.shape[1:])[:, 0])
    assert seed0.meta["backbone"].startswith(str((tmp_path / "b" / "stages").resolve()))


def test_sets_outside_eval_ipc_are_made_reported_and_shown_without_an_evaluation(tmp_path, mnist_root):
    """A quality-only spec (the sampling sweep: every set at IPC 2, evaluated at no IPC) lists each set with its
    set-quality report on the leaderboard instead of an empty page."""
    spec = small_spec(methods=["random"], ipc=[2], eval_ipc=[1], quality=True)
    out = tmp_path / "bench"
    run_bench(spec, out, data_root=str(mnist_root), progress=False)
    cells = collect_cells(spec, out)
    assert [c["status"] for c in cells] == ["set only"] and cells[0]["quality"]["precision"] is not None
    assert not (out / "runs" / cells[0]["cell"] / "eval").exists()
    page = (out / "leaderboard.md").read_text()
    assert "1 sets made without an evaluation" in page and "| random | mnist | 2 |" in page
