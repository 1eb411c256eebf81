"""Every CLI command end to end on tiny data in the real file formats, plus the bad inputs."""

import json
import subprocess
import sys

import pytest
import torch

from gendistill.cli import main


def run_ok(args, capsys):
    code = main(["--quiet", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def run_err(args, capsys):
    code = main(["--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gendistill: error:"), err
    return lines[0]


def test_methods_datasets_networks(capsys):
    out = run_ok(["methods"], capsys)
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert {"random", "herding", "kcenter", "kmeans", "class_mean"} <= set(names)
    assert "mnist" in run_ok(["datasets"], capsys)
    assert "resnet_ap10" in run_ok(["networks"], capsys)


def test_distill_eval_export_table(tmp_path, data_env, capsys):
    out_dir = tmp_path / "run"
    out = run_ok(["distill", "--method", "herding", "--dataset", "mnist", "--ipc", "2", "--out", str(out_dir),
                  "--set", "feature_model=convnet_w8", "--set", "feature_epochs=1", "--seed", "3"], capsys)
    assert "wrote" in out
    assert {"config.yaml", "env.json", "synset"} <= {p.name for p in out_dir.iterdir()}
    import yaml

    cfg = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert cfg["method"] == "herding" and cfg["seed"] == 3 and cfg["config"]["feature_model"] == "convnet_w8"
    result_file = tmp_path / "r.json"
    out = run_ok(["eval", "--synset", str(out_dir / "synset"), "--model", "convnet_w8", "--runs", "2", "--epochs",
                  "2", "--json", str(result_file)], capsys)
    assert "±" in out and "reduced" in out
    result = json.loads(result_file.read_text())
    assert {"mean", "std", "accs", "protocol"} <= set(result) and len(result["accs"]) == 2
    assert result["protocol"]["model"] == "convnet_w8"
    run_ok(["export", "--synset", str(out_dir / "synset"), "--format", "imagefolder", "--out", str(tmp_path / "f")],
           capsys)
    assert len(list((tmp_path / "f").rglob("*.png"))) == 20
    run_ok(["export", "--synset", str(out_dir / "synset"), "--format", "grid", "--out", str(tmp_path / "g.png")],
           capsys)
    assert (tmp_path / "g.png").stat().st_size > 0
    (out_dir / "result.json").write_text(result_file.read_text())
    table = run_ok(["table", str(tmp_path)], capsys)
    assert "| herding | mnist | 2 |" in table


def test_distill_with_eval_writes_results(tmp_path, data_env, capsys):
    run_ok(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", str(tmp_path / "r"),
            "--eval", "dsa", "--eval-runs", "1", "--eval-epochs", "1"], capsys)
    assert (tmp_path / "r" / "result.json").is_file() and "| random |" in (tmp_path / "r" / "results.md").read_text()


def test_import_command(tmp_path, data_env, capsys):
    torch.save({"data": [[torch.randn(10, 1, 28, 28), torch.arange(10)]]}, tmp_path / "res.pt")
    run_ok(["import", "--format", "dc", "--path", str(tmp_path / "res.pt"), "--dataset", "mnist", "--out",
            str(tmp_path / "s")], capsys)
    assert json.loads((tmp_path / "s" / "synset.json").read_text())["meta"]["dataset"] == "mnist"


def test_quickstart_end_to_end(tmp_path, data_env, capsys):
    out = run_ok(["quickstart", "--out", str(tmp_path / "q"), "--ipc", "2", "--epochs", "1", "--runs", "1",
                  "--methods", "random,herding,kmeans"], capsys)
    assert "random" in out and "herding" in out and "index.html" in out
    report = (tmp_path / "q" / "leaderboard.md").read_text()
    assert "reduced" in report and "mnist" in report
    cells = json.loads((tmp_path / "q" / "cells.json").read_text())
    assert {c["method"] for c in cells} == {"random", "herding", "kmeans"}
    assert all(c["status"] == "done" and (tmp_path / "q" / c["grid"]).is_file() for c in cells)
    assert {c["result"]["protocol"]["name"] for c in cells} == {"dsa"}  # one protocol for every row
    herding = next(c for c in cells if c["method"] == "herding")
    meta = json.loads((tmp_path / "q" / herding["run_dir"] / "synset" / "synset.json").read_text())["meta"]
    assert meta["config"]["candidates_per_class"] == 1000


@pytest.mark.parametrize("args,needle", [
    (["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", "X", "--set", "bogus=1"],
     "unknown config key bogus"),
    (["distill", "--method", "randomm", "--dataset", "mnist", "--ipc", "1", "--out", "X"], "unknown method"),
    (["distill", "--method", "random", "--dataset", "mnist", "--ipc", "0", "--out", "X"], "--ipc"),
    (["distill", "--method", "random", "--dataset", "mnist", "--ipc", "500", "--out", "X"], "exceeds"),
    (["distill", "--method", "random", "--dataset", "cifar10", "--ipc", "1", "--out", "X"], "cifar-10-batches-py"),
    (["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", "X", "--preset", "nope"],
     "no preset"),
    (["eval", "--synset", "nowhere"], "not a folder"),
    (["eval", "--synset", "X", "--protocol", "nope"], "unknown protocol"),
])
def test_bad_inputs_give_one_line(tmp_path, data_env, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    if args[:3] == ["eval", "--synset", "X"]:
        run_ok(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", "X"], capsys)
        args = [*args[:2], "X/synset", *args[3:]]
    line = run_err(args, capsys)
    assert needle in line


def test_corrupt_synset_and_wrong_network_size(tmp_path, data_env, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_ok(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", "X"], capsys)
    assert "at least 64x64" in run_err(["eval", "--synset", "X/synset", "--model", "convnet_d6"], capsys)
    f = tmp_path / "X" / "synset" / "synset.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    assert "truncated" in run_err(["eval", "--synset", "X/synset"], capsys)


def test_existing_run_needs_resume(tmp_path, data_env, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"x")
    line = run_err(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out",
                    str(tmp_path / "r")], capsys)
    assert "--resume" in line


def test_console_script_prints_no_traceback(tmp_path, data_env):
    proc = subprocess.run([sys.executable, "-m", "gendistill.cli", "distill", "--method", "random", "--dataset",
                           "cifar10", "--ipc", "1", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "gendistill.cli", "--debug", "distill", "--method", "random",
                           "--dataset", "cifar10", "--ipc", "1", "--out", str(tmp_path / "x")], capture_output=True,
                          text=True)
    assert "Traceback" in proc.stderr


def test_eval_hard_labels_of_a_soft_set(tmp_path, data_env, capsys, monkeypatch):
    """A soft-label set (DATM-style) is refused by a hard-label protocol, and `--hard-labels` evaluates its argmax."""
    from gendistill.synset.format import SyntheticSet

    monkeypatch.chdir(tmp_path)
    run_ok(["distill", "--method", "random", "--dataset", "mnist", "--ipc", "1", "--out", "X"], capsys)
    syn = SyntheticSet.load("X/synset")
    assert syn.meta["distill_peak_memory_mb"] > 0  # every run records its peak memory
    logits = torch.nn.functional.one_hot(syn.labels, 10).float() * 3
    SyntheticSet(syn.images, logits, syn.class_names, syn.preprocessing, lr=0.01,
                 meta={**syn.meta, "method": "datm"}).save(tmp_path / "soft")
    assert "soft labels" in run_err(["eval", "--synset", "soft", "--protocol", "dsa"], capsys)
    run_ok(["eval", "--synset", "soft", "--protocol", "dsa", "--hard-labels", "--model", "convnet_w8", "--runs", "1",
            "--epochs", "1", "--json", "r.json"], capsys)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["synset"]["label_kind"] == "hardened" and result["protocol"]["label_loss"] == "ce"


def test_resume_alone_of_a_run_killed_before_its_record_says_to_repeat_the_command(tmp_path, data_env, capsys):
    (tmp_path / "r").mkdir()  # what a kill before the first write leaves
    line = run_err(["distill", "--resume", "--out", str(tmp_path / "r")], capsys)
    assert "no run record" in line and "repeat the full distill command" in line
