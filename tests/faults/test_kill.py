"""kill -9 at seeded points (fault injection, ``gendistill.utils.faults``) during a pixel method, a trajectory method
with its expert-buffer build, a Minimax fine-tune, sampling and a bench; each resumes to exactly the result of the
uninterrupted run. The fast subset (CI) tries one point per scenario; ``pytest --faults`` tries five."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from faults.report import tally

pytestmark = pytest.mark.faults


def gendistill(args: list[str], env: dict[str, str], faults: str = "") -> subprocess.CompletedProcess:
    run_env = {**env, "GENDISTILL_THREADS": "1", "GENDISTILL_FAULTS": faults}
    return subprocess.run([sys.executable, "-m", "gendistill.cli", "--quiet", *args], env=run_env,
                          capture_output=True, text=True, timeout=600)


def kill_points(scenario: str, count: int, available: range) -> list[int]:
    """``count`` seeded points of ``available`` (the same points on every machine)."""
    return sorted(random.Random(f"faults-{scenario}").sample(list(available), k=min(count, len(available))))


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def synset_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "synset.safetensors"))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def env(data_env, tmp_path) -> dict[str, str]:
    return {**os.environ, "GENDISTILL_DATA": str(data_env), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def _kill_then_resume(tmp_path: Path, env: dict, scenario: str, args: list[str], resume: list[str], point: str,
                      available: range, fault_points: int, result_of) -> None:
    whole = tmp_path / "whole"
    done = gendistill([*args, "--out", str(whole)], env)
    assert done.returncode == 0, done.stderr
    reference = result_of(whole)
    for n in kill_points(scenario, fault_points, available):
        out = tmp_path / f"killed_{n}"
        first = gendistill([*args, "--out", str(out)], env, faults=f"kill@{point}#{n}")
        assert killed(first), (n, first.returncode, first.stderr[-500:])
        again = gendistill([*resume, "--out", str(out)], env)
        assert again.returncode == 0, (n, again.stderr[-1000:])
        assert same_tensors(result_of(out), reference), f"{scenario}: killed at {point} #{n}, resumed elsewhere"
        tally("kill -9", f"{scenario} (at {point})", injected=1, survived=1, identical=1)


def test_kill_during_a_pixel_method_resumes_bitwise(tmp_path, env, fault_points):
    args = ["distill", "--method", "dm", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke",
            "--set", "iterations=12", "--checkpoint-every", "3"]
    _kill_then_resume(tmp_path, env, "dm", args, ["distill", "--resume"], "step", range(1, 13), fault_points,
                      lambda out: synset_tensors(out / "synset"))


def test_kill_during_a_trajectory_method_and_its_buffer_build_resumes_bitwise(tmp_path, env, fault_points):
    args = ["distill", "--method", "mtt", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke",
            "--set", "iterations=4", "--set", "buffer_epochs=3", "--checkpoint-every", "1"]
    # every atomic write: expert epochs, the buffer manifest, checkpoints - a kill anywhere in the build or the run
    # a kill at the first writes leaves no run record yet, so the resume repeats the command (as a user would)
    _kill_then_resume(tmp_path, env, "mtt", args, [*args, "--resume"], "write", range(1, 16), fault_points,
                      lambda out: synset_tensors(out / "synset"))


def test_kill_during_a_run_with_best_of_run_selection_resumes_to_the_same_best_set(tmp_path, env, fault_points):
    args = ["distill", "--method", "dm", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke",
            "--set", "iterations=6", "--checkpoint-every", "3", "--best-of-run", "2", "--best-of-run-runs", "1",
            "--best-of-run-epochs", "2"]

    def kept(out: Path) -> dict[str, torch.Tensor]:
        history = json.loads((out / "best_of_run.json").read_text())["history"]
        return {**synset_tensors(out / "synset"), **{f"best_{k}": v for k, v in
                                                     synset_tensors(out / "best_synset").items()},
                "history": torch.tensor([[h["iteration"], *h["accs"]] for h in history])}

    # steps and every atomic write (evaluation records, kept sets, checkpoints)
    _kill_then_resume(tmp_path, env, "best-of-run", args, [*args, "--resume"], "write", range(1, 10),
                      fault_points, kept)


@pytest.fixture
def tiny_model(tmp_path, env) -> Path:
    out = tmp_path / "pretrained"
    done = gendistill(["pretrain", "--dataset", "mnist", "--preset", "smoke", "--set", "pretrain_steps=3",
                       "--out", str(out)], env)
    assert done.returncode == 0, done.stderr
    return out / "model"


def test_kill_during_a_minimax_finetune_resumes_bitwise(tmp_path, env, tiny_model, fault_points):
    args = ["finetune", "--dataset", "mnist", "--preset", "smoke", "--model", str(tiny_model),
            "--set", "finetune_steps=8", "--set", "checkpoint_every=2"]

    def weights(out: Path) -> dict[str, torch.Tensor]:
        return {**load_file(str(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors")),
                **load_file(str(out / "model" / "difffit" / "scales.safetensors"))}

    _kill_then_resume(tmp_path, env, "finetune", args, [*args, "--resume"], "train_step", range(1, 9),
                      fault_points, weights)


def test_kill_during_sampling_regenerates_the_same_images(tmp_path, env, tiny_model, fault_points):
    args = ["sample", "--dataset", "mnist", "--preset", "smoke", "--model", str(tiny_model), "--ipc", "3",
            "--set", "sample_batch_size=4"]
    _kill_then_resume(tmp_path, env, "sample", args, args, "sample_batch", range(1, 7), fault_points,
                      lambda out: synset_tensors(out / "ipc3" / "synset"))


def test_kill_during_a_bench_resumes_to_the_same_results(tmp_path, env, fault_points):
    spec = {"name": "faults", "methods": ["random", {"name": "dm", "set": ["iterations=3", "batch_real=4",
                                                                          "model=convnet_w8"]}],
            "datasets": ["mnist"], "ipc": [1, 2, 3], "protocols": ["dc"], "eval_models": ["convnet_w8"], "runs": 1,
            "epochs": 2, "quality": False}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    args = ["bench", str(tmp_path / "spec.yaml")]

    def results(out: Path) -> dict[str, torch.Tensor]:
        cells = json.loads((out / "cells.json").read_text())
        assert all(c["status"] == "done" for c in cells)
        return {c["cell"]: torch.tensor(c["result"]["accs"]) for c in cells}

    _kill_then_resume(tmp_path, env, "bench", args, args, "bench_cell", range(1, 6), fault_points, results)
