"""The first hour of a new user: threads, progress, stale results, discoverable settings, round-trippable exports,
interrupts and the Python API."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import run_ok as ok

from gendistill.cli import main


def err(args, capsys, code=2):
    got = main(["--quiet", *args])
    text = capsys.readouterr().err.strip().splitlines()
    assert got == code and len(text) == 1 and text[0].startswith("gendistill: "), text
    return text[0]


# ------------------------------------------------------------------------------------------------- threads
def test_threads_flag_env_and_default(monkeypatch):
    from gendistill.utils.errors import ConfigError
    from gendistill.utils.threads import apply_threads, default_threads, resolve_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("GENDISTILL_THREADS", raising=False)
        assert resolve_threads() == default_threads() >= 1
        monkeypatch.setenv("GENDISTILL_THREADS", "1")
        assert resolve_threads() == 1 and resolve_threads(2) == 2  # the flag wins over the variable
        assert apply_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("GENDISTILL_THREADS", "many")
        with pytest.raises(ConfigError):
            resolve_threads()
        with pytest.raises(ConfigError):
            resolve_threads(0)
    finally:
        torch.set_num_threads(before)


def test_global_flags_after_the_subcommand_and_threads_recorded(tmp_path, data_env, capsys):
    before = torch.get_num_threads()
    try:
        code = main(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out",
                     str(tmp_path / "r"), "--quiet", "--threads", "1"])
        assert code == 0 and torch.get_num_threads() == 1
        env = json.loads((tmp_path / "r" / "env.json").read_text())
        assert env["torch_threads"] == 1
        assert main(["methods", "--debug"]) == 0
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ progress
def test_feature_network_training_and_embedding_show_progress(tiny_train, capsys):
    from gendistill.methods.coreset import CoresetConfig, Herding

    Herding(CoresetConfig(feature_model="convnet_w8", feature_epochs=1)).distill(tiny_train, 1, progress=True)
    text = capsys.readouterr().err
    assert "feature network" in text and "embedding 120 images" in text
    Herding(CoresetConfig(feature_model="convnet_w8", feature_epochs=1)).distill(tiny_train, 1, progress=False)
    assert "feature network" not in capsys.readouterr().err


def test_eval_progress_counts_passes_and_test_subset_is_labelled(tiny_train, tiny_test, capsys):
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.synset.format import SyntheticSet

    idx = tiny_train.sample_indices(2, torch.Generator().manual_seed(0)).reshape(-1)
    syn = SyntheticSet(tiny_train.images(idx), tiny_train.labels[idx], tiny_train.class_names,
                       tiny_train.preprocessing, meta={"method": "random", "dataset": "tiny"})
    res = evaluate(syn, tiny_test, "dc", model="convnet_w8", epochs=2, runs=1, progress=True, test_subset=20)
    text = capsys.readouterr().err
    assert "pass" in text and "2 epochs + 1 pass" in text and "test pass (20 images)" in text
    assert res.reduced and "test subset 20 of 50 images" in res.reduced_note


# ----------------------------------------------------------------------------------------- stale results
def test_existing_run_folder_needs_resume_or_overwrite(tmp_path, data_env, capsys):
    out = tmp_path / "run"
    ok(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", str(out), "--eval", "dc",
        "--eval-runs", "1", "--eval-epochs", "1"], capsys)
    assert (out / "result.json").is_file()
    line = err(["distill", "--method", "herding", "--dataset", "mnist", "--ipc", "1", "--out", str(out)], capsys)
    assert "not empty" in line and "--overwrite" in line
    ok(["distill", "--method", "kmeans", "--dataset", "mnist", "--ipc", "1", "--out", str(out), "--overwrite"],
       capsys)
    assert not (out / "result.json").exists()  # the stale result of the old set is gone
    assert json.loads((out / "synset" / "synset.json").read_text())["meta"]["method"] == "kmeans"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    line = err(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", str(other),
                "--overwrite"], capsys)
    assert "not a gendistill run folder" in line and (other / "thesis.tex").is_file()


def test_budget_lowering_override_marks_the_set_reduced(tmp_path, data_env, capsys):
    ok(["distill", "--method", "dm", "--dataset", "mnist", "--ipc", "1", "--out", str(tmp_path / "d"),
        "--set", "iterations=2", "--set", "batch_real=4", "--set", "model=convnet_w8"], capsys)
    meta = json.loads((tmp_path / "d" / "synset" / "synset.json").read_text())["meta"]
    assert meta["preset"] == "paper" and meta["reduced_budget"]
    assert meta["overrides"] == ["iterations=2", "batch_real=4", "model=convnet_w8"]
    assert any(r.startswith("iterations 2 < 20000") for r in meta["budget_reductions"])
    from gendistill.presets import budget_reductions

    class C:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    zero_is_full = {"iterations": True, "max_outer": True}
    assert budget_reductions(C(iterations=0, max_outer=5), C(iterations=0, max_outer=0), zero_is_full) == \
        ["max_outer 5 (full: 0)"]
    assert budget_reductions(C(iterations=30000), C(iterations=20000), zero_is_full) == []


def test_failed_distill_leaves_no_stray_folder(tmp_path, data_env, capsys):
    line = err(["distill", "--method", "dm", "--dataset", "mnist", "--ipc", "500", "--out", str(tmp_path / "x")],
               capsys)
    assert "exceeds" in line and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------- exports round trip
def test_imagefolder_export_sorts_in_label_order_and_round_trips(tmp_path, data_env, capsys):
    import torchvision

    from gendistill.synset.format import SyntheticSet

    ok(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "2", "--out", str(tmp_path / "r")], capsys)
    ok(["export", "--synset", str(tmp_path / "r"), "--out", str(tmp_path / "png")], capsys)
    folder = torchvision.datasets.ImageFolder(str(tmp_path / "png"))
    mapping = json.loads((tmp_path / "png" / "class_to_idx.json").read_text())
    assert folder.class_to_idx == mapping and list(mapping.values()) == list(range(10))
    original = SyntheticSet.load(tmp_path / "r")
    assert [folder[i][1] for i in range(len(folder))] == original.labels.tolist()
    ok(["import", "--format", "imagefolder", "--path", str(tmp_path / "png"), "--dataset", "mnist", "--out",
        str(tmp_path / "back")], capsys)
    back = SyntheticSet.load(tmp_path / "back")

    def u8(s):
        return (s.to_pixels().clamp(0, 1) * 255).round().to(torch.uint8)

    assert torch.equal(u8(back), u8(original)) and torch.equal(back.labels, original.labels)
    assert back.meta["method"] == "random" and back.meta["dataset"] == "mnist"


def test_imagefolder_dataset_records_folder_resolution_and_normalisation(tmp_path, monkeypatch, capsys):
    from PIL import Image

    root = tmp_path / "folder"
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 40, 100, 200 if c == "cat" else 0)).save(root / "train" / c / f"{i}.png")
    out = ok(["distill", "--method", "random", "--dataset", "imagefolder", "--data-root", str(root), "--ipc", "1",
              "--resolution", "16", "--out", str(tmp_path / "r")], capsys)
    assert "3x16x16" in out and "ImageNet mean/std" in out and str(root) in out
    import yaml

    record = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert record["data"]["folder"] == str(root.resolve()) and record["data"]["resolution"] == 16


# --------------------------------------------------------------------------------------- discoverability
def test_methods_name_and_config_show_settings_and_presets(capsys):
    out = ok(["methods", "dm"], capsys)
    assert "lr_img (float, default 1.0)" in out and "cpu" in out and "default evaluation protocol: dsa" in out
    out = ok(["config", "dm", "--preset", "cpu", "--set", "lr_img=2"], capsys)
    assert "lr_img: 2" in out and "iterations: 300" in out
    assert "unknown method" in err(["methods", "dmm"], capsys)


def test_table_reads_every_result_json_and_writes_csv(tmp_path, data_env, capsys):
    ok(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", str(tmp_path / "r")], capsys)
    ok(["eval", "--synset", str(tmp_path / "r"), "--runs", "1", "--epochs", "1", "--model", "convnet_w8",
        "--json", str(tmp_path / "r" / "eval_w8.json")], capsys)
    (tmp_path / "r" / "notes.json").write_text(json.dumps({"hello": 1}))  # not a result: skipped
    out = ok(["table", str(tmp_path), "--csv", str(tmp_path / "t.csv")], capsys)
    assert "| random | mnist | 1 |" in out and "convnet_w8" in out
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("method,dataset,ipc") and len(lines) == 2


# ------------------------------------------------------------------------------------- resume, interrupts
def test_resume_with_only_out_continues_the_recorded_run(tmp_path, data_env, capsys, monkeypatch):
    from gendistill.runs import RunDir

    args = ["distill", "--method", "dm", "--dataset", "mnist", "--ipc", "1", "--out", str(tmp_path / "d"), "--set",
            "iterations=4", "--set", "batch_real=4", "--set", "model=convnet_w8", "--checkpoint-every", "2"]
    original = RunDir.save_checkpoint

    def die_after_checkpoint(self, state):
        original(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "save_checkpoint", die_after_checkpoint)
    assert main(["--quiet", *args]) == 130
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    capsys.readouterr()
    ok(["distill", "--out", str(tmp_path / "d"), "--resume"], capsys)
    assert (tmp_path / "d" / "synset").is_dir()
    line = err(["distill", "--out", str(tmp_path / "d"), "--resume", "--set", "iterations=9"], capsys)
    assert "different config" in line
    assert "--resume" in err(["distill", "--out", str(tmp_path / "new")], capsys)


def test_resume_accepts_options_a_newer_version_added_at_their_defaults_only(tmp_path):
    """A run saved before an option existed resumes when the new option sits at its default (the old behaviour);
    a new option at another value (e.g. from a preset) or a changed value is refused."""
    from gendistill.runs import RunDir
    from gendistill.utils.errors import GendistillError

    def resume(config: dict) -> None:
        RunDir(tmp_path / "r", resume=True, progress=False).write_config(
            {"method": "dm", "config": config}, defaults={"config": {"iterations": 1, "new_option": "default"}})

    RunDir(tmp_path / "r", progress=False).write_config({"method": "dm", "config": {"iterations": 4}})
    for refused in ({"iterations": 4, "new_option": "other"}, {"iterations": 5, "new_option": "default"},
                    {"iterations": 4, "unknown_new_option": 1}):
        with pytest.raises(GendistillError, match=r"different config \(config\)"):
            resume(refused)
    resume({"iterations": 4, "new_option": "default"})
    with pytest.raises(GendistillError, match=r"different config \(config\)"):  # now saved with the option
        resume({"iterations": 4, "new_option": "other"})


def test_sigterm_checkpoints_and_exits_like_ctrl_c(tmp_path, mnist_root):
    out = tmp_path / "d"
    env = {**os.environ, "GENDISTILL_DATA": str(mnist_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gendistill.cli", "--quiet", "distill", "--method", "dm", "--dataset", "mnist",
           "--ipc", "1", "--out", str(out), "--set", "iterations=100000", "--set", "batch_real=4", "--set",
           "model=convnet_w8", "--checkpoint-every", "100000"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "config.yaml").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a few iterations
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and "checkpoint saved" in stderr and "Traceback" not in stderr
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] >= 1


# ----------------------------------------------------------------------------------------------- the API
def test_python_api_top_level(tmp_path, data_env):
    import gendistill

    syn = gendistill.distill("random", "mnist", 1, progress=False)
    assert len(syn) == 10 and syn.meta["method"] == "random"
    saved = gendistill.distill("random", "mnist", 1, out=str(tmp_path / "r"), progress=False)
    loaded = gendistill.load_synset(str(tmp_path / "r"))
    assert torch.equal(saved.images, loaded.images)
    splits = gendistill.load_dataset("mnist")
    res = gendistill.evaluate(loaded, splits.test, model="convnet_w8", epochs=1, runs=1, progress=False)
    assert res.protocol_source == "default of method random"


def test_example_script_runs(tmp_path, data_env):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(__file__).resolve().parents[1] / "docs" / "examples" / "api.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "ex"), "--epochs", "1", "--runs", "1",
                           "--ipc", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "protocol dc (default of method herding)" in proc.stdout


def test_passive_omp_wait_policy_is_the_cli_default_unless_set_and_import_changes_nothing():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    plain = "import os, sys, gendistill; gendistill.evaluate; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    out = subprocess.run([sys.executable, "-c", plain], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "unset", out.stderr  # a library import leaves the process environment alone
    code = "import os, gendistill.cli; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ACTIVE"
