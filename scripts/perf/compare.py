"""Side-by-side speed of gendistill and a reference implementation, on this machine, one command per comparison.

    python scripts/perf/compare.py dm --ref /path/to/DatasetCondensation --iterations 12 --json results/perf/dm.json
    python scripts/perf/compare.py evaluate --ref /path/to/DatasetCondensation --json results/perf/evaluate.json
    python scripts/perf/compare.py cafe --ref /path/to/CAFE --iterations 12
    python scripts/perf/compare.py mtt --ref /path/to/mtt-distillation --experts 2 --expert-epochs 3
    python scripts/perf/compare.py datm --ref /path/to/DATM --experts 2 --expert-epochs 3

``--ref`` is a checkout of the reference repository (or a bare git directory, e.g. what the project's ``fetch`` tool
brings: it is exported to a temporary folder). Nothing of the reference is committed here. The reference copy gets only
the edits this harness lists for it (``PATCHES``): what the current torch/scipy need, an empty evaluation pool so that
distillation is timed alone, and one timing print per iteration; a patch that does not apply stops the run. Its commit
is recorded. ``REFERENCES`` says which repository each comparison needs (checked on the export).

Both sides run as child processes of this one, one after the other, with the same thread count, the same data and the
same settings. Data: the MNIST files of ``--data-root`` (linked into the reference's layout) at the published MNIST
IPC 10 setting; CAFE, MTT and DATM only load CIFAR, so those comparisons run on CIFAR-10-shaped *random* data
(``make_random_cifar``: 32x32 RGB, 10 classes, ``--random-per-class`` training images per class, CIFAR-10's 5000 by
default, and a fifth of that for the test split; each class is uniform noise around its own random template, so
networks can learn it) written once in CIFAR-10's python layout and read by both sides, at the published CIFAR-10
IPC 10 setting. The reference reads those files through torchvision, whose CIFAR10 class checks the md5 of the
publisher's files: the reference child gets a ``sitecustomize`` (``SHIM_SITE``) that skips only that check. MTT and
DATM import wandb for logging: the child gets a no-op stand-in (``SHIM_WANDB``) instead of the package.

Reported per side: the median seconds per outer iteration over the timed iterations (after ``--warmup``), their mean
loss and its std; the ratio reference / ours; and whether the mean losses agree within the noise (|difference| below 3
standard errors). The settings given to both sides (``shared``) are recorded; ``--set KEY=VALUE`` changes one of them
on both sides at once (a reduced trial, recorded). MTT and DATM first train expert buffers on each side with its own
buffer script (``--experts`` experts x ``--expert-epochs`` epochs, untimed setup, wall time recorded); the start-epoch
window is lowered, identically on both sides, only as far as those short buffers need. ``evaluate`` times one run of
the ``dsa`` recipe (ConvNet-3, ``--epochs`` epochs, random real MNIST IPC 10, then the 10k-image test) through the
reference's ``evaluate_synset`` and through ``gendistill.evaluate``. A comparison listed in ``BLOCKED`` prints why it
cannot run here and exits with status 3.

``--profile-reference FILE`` (method comparisons) runs the reference side alone, once, with ``torch.profiler`` on
over its timed iterations (started and stopped at its timing prints by the ``sitecustomize`` shim, so the reference's
files are not edited further) and writes the top operators by self CPU time to FILE, the reference's counterpart of
``op_profile.py``'s tables of our side.

``--rounds N`` runs both sides N times, alternating which goes first, pools their timed iterations (``evaluate``:
their seconds per run) and records each round's ratio: the machine's own speed drifts by 10-25 % over minutes, which
one run per side cannot tell from a difference between the sides.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[2]

#: the timing print every reference gets once per outer iteration (``time`` imported inline: not all scripts do)
PERF = "print('PERF_ITER', it, __import__('time').perf_counter(), {loss}, flush=True)"
SCIPY_ROTATE = ("from scipy.ndimage.interpolation import rotate as scipyrotate",
                "from scipy.ndimage import rotate as scipyrotate")

#: reference -> file -> [(old, new)]: the only edits allowed (torch/scipy compatibility, no evaluation, timing print)
PATCHES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "DatasetCondensation": {
        "utils.py": [SCIPY_ROTATE],
        "networks.py": [("out.view(out.size(0), -1)", "out.reshape(out.size(0), -1)"),
                        ("x = x.view(x.size(0), -1)", "x = x.reshape(x.size(0), -1)")],
        "main_DM.py": [(
            "eval_it_pool = np.arange(0, args.Iteration+1, 2000).tolist() if args.eval_mode == 'S' or args.eval_mode "
            "== 'SS' else [args.Iteration]", "eval_it_pool = []"), (
            "            loss_avg /= (num_classes)\n",
            "            loss_avg /= (num_classes)\n            print('PERF_ITER', it, time.perf_counter(), loss_avg, "
            "flush=True)\n")],
        "main.py": [(
            "eval_it_pool = np.arange(0, args.Iteration+1, 500).tolist() if args.eval_mode == 'S' or args.eval_mode "
            "== 'SS' else [args.Iteration]", "eval_it_pool = []"), (
            "            loss_avg /= (num_classes*args.outer_loop)\n",
            "            loss_avg /= (num_classes*args.outer_loop)\n"
            "            print('PERF_ITER', it, time.perf_counter(), loss_avg, flush=True)\n")],
    },
    # The printed loss is the iteration's sum, over its image updates, of the terms that reach the images
    # (feature alignment + discrimination; loss_real only trains nothing here): the reference keeps no update count.
    "CAFE": {
        "utils.py": [SCIPY_ROTATE],
        "distill.py": [(
            "    eval_it_pool = np.arange(0, args.Iteration + 1, 100).tolist() if args.eval_mode == 'S' else [\n"
            "        args.Iteration]", "    eval_it_pool = []"), (
            "            loss_avg /= (num_classes * args.outer_loop)\n",
            "            loss_avg /= (num_classes * args.outer_loop)\n            "
            + PERF.format(loss="loss_middle_item + loss_kai") + "\n")],
    },
    "mtt-distillation": {
        "utils.py": [SCIPY_ROTATE],
        "distill.py": [(
            "    eval_it_pool = np.arange(0, args.Iteration + 1, args.eval_it).tolist()\n",
            "    eval_it_pool = []\n"), (
            "        optimizer_img.step()\n        optimizer_lr.step()\n",
            "        optimizer_img.step()\n        optimizer_lr.step()\n        "
            + PERF.format(loss="grand_loss.item()") + "\n")],
    },
    # DATM's evaluation pool is emptied by its own flags (--skip_first_eva True --eval_it 10**9), no edit.
    "DATM": {
        "utils/utils_baseline.py": [SCIPY_ROTATE],
        "utils/utils_gsam.py": [SCIPY_ROTATE],
        "distill/DATM.py": [(
            '            wandb.log({"falts": start_epoch}, step=it)\n',
            '            wandb.log({"falts": start_epoch}, step=it)\n        '
            + PERF.format(loss="grand_loss.item()") + "\n")],
    },
    "Efficient-Dataset-Condensation": {},
}

#: reference -> (repository, (file, text) that identifies an export of it)
REFERENCES: dict[str, tuple[str, tuple[str, str]]] = {
    "DatasetCondensation": ("VICO-UoE/DatasetCondensation", ("main_DM.py", "def main")),
    "CAFE": ("kaiwang960112/CAFE", ("distill.py", "def criterion_middle")),
    "mtt-distillation": ("GeorgeCazenavette/mtt-distillation", ("buffer.py", "replay_buffer_")),
    "DATM": ("NUS-HPC-AI-Lab/DATM", ("distill/DATM.py", "samples_predicted_correctly")),
    "Efficient-Dataset-Condensation": ("snu-mllab/Efficient-Dataset-Condensation", ("condense.py", "Synthesizer")),
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One comparison.

    Attributes:
        reference: key of ``REFERENCES`` / ``PATCHES``.
        script: the reference script (relative to ``cwd``) and its fixed arguments.
        method: the gendistill method.
        shared: our config key -> (reference flag, value): given to both sides (``--set`` changes the value).
        overrides: ``--set`` for our side only (what has no reference flag, or where the spellings differ).
        data: ``mnist`` or ``random_cifar10``.
        style: how iterations and paths are passed to the reference: ``dc`` (DatasetCondensation, CAFE), ``mtt``,
            ``datm``.
        cwd: the reference's working folder inside the export.
        config: a published YAML config of the reference (path inside the export) that takes the shared settings
            and paths instead of the command line (DATM parses only ``--cfg`` first, so it takes no other flag).
        zca: both sides whiten with ZCA (the reference's kornia ZCA; ours ``--zca kornia``).
        buffers: expert buffers to train first: ``""`` (none), ``sgd`` (MTT) or ``gsam`` (DATM/FTD).
        our_loss: our per-iteration loss from one ``metrics.jsonl`` line (comparable to the reference's print).
        note: what is worth knowing when reading the numbers.
    """

    reference: str
    script: tuple[str, ...]
    method: str
    shared: dict[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    data: str = "mnist"
    style: str = "dc"
    cwd: str = "."
    config: str = ""
    zca: bool = False
    buffers: str = ""
    our_loss: Callable[[dict], float] = lambda line: float(line["loss"])
    note: str = ""


def _cafe_loss(line: dict) -> float:
    # metrics.jsonl holds per-update means; the reference prints the iteration's sum over its updates
    return line["updates"] * (line["align"] + 0.01 * line["discrim"])


def _per_class_loss(line: dict) -> float:
    # ours logs the loss summed over the 10 MNIST classes (per outer loop for dc/dsa); the DatasetCondensation
    # scripts print loss_avg / num_classes (DM) and loss_avg / (num_classes * outer_loop) (DC/DSA)
    return float(line["loss"]) / 10


#: comparison -> settings. dm/dc/dsa: MNIST IPC 10 as published. cafe/mtt/datm: CIFAR-10 IPC 10 as published (our
#: presets configs/<method>/cifar10_ipc10.yaml, which cite their sources), on random CIFAR-shaped data.
SETTINGS: dict[str, Comparison] = {
    "dm": Comparison("DatasetCondensation", (
        "main_DM.py", "--dataset", "MNIST", "--model", "ConvNet", "--ipc", "10", "--dsa_strategy",
        "color_crop_cutout_flip_scale_rotate", "--init", "real", "--lr_img", "1", "--batch_real", "256"), "dm",
        our_loss=_per_class_loss),
    "dc": Comparison("DatasetCondensation", (
        "main.py", "--method", "DC", "--dataset", "MNIST", "--model", "ConvNet", "--ipc", "10"), "dc",
        our_loss=_per_class_loss),
    "dsa": Comparison("DatasetCondensation", (
        "main.py", "--method", "DSA", "--dataset", "MNIST", "--model", "ConvNet", "--ipc", "10", "--init", "real",
        "--dsa_strategy", "color_crop_cutout_flip_scale_rotate"), "dsa", our_loss=_per_class_loss),
    # CAFE's distill.py reshapes every batch to 3x32x32 (CIFAR only). README command: --dataset CIFAR10 --model
    # ConvNet --ipc 10 (method DC: no DSA, noise init). Layer weights 0.1/0.1/1/1 (+1 on the embedding) and the
    # real-accuracy probes (128 images per class) are the same constants on both sides.
    "cafe": Comparison("CAFE", ("distill.py", "--method", "DC", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc",
                                "10"), "cafe", shared={
        "lr_img": ("--lr_img", 0.1), "lr_net": ("--lr_net", 0.01), "batch_real": ("--batch_real", 256),
        "batch_train": ("--batch_train", 256), "init": ("--init", "noise"), "inner_weight": ("--inner_weight", 0.01),
        "lambda_outer": ("--lambda_1", 0.04), "lambda_inner": ("--lambda_2", 0.03)},
        overrides=("dsa=false",), data="random_cifar10", our_loss=_cafe_loss,
        note="an outer iteration runs until the real-accuracy windows settle (>= 10 image updates, each followed by "
             ">= 10 network epochs), so its length depends on the run; ours records updates and inner_epochs"),
    # MTT: CIFAR-10 IPC 10 (syn_steps 30, expert_epochs 2, max_start_epoch 20, ZCA, lr_img 100, lr_lr 1e-5,
    # lr_teacher 0.001, all 100 synthetic images per student step, real init, DSA); experts from buffer.py.
    "mtt": Comparison("mtt-distillation", ("distill.py", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc", "10",
                                           "--zca", "--pix_init", "real", "--dsa", "True"), "mtt", shared={
        "syn_steps": ("--syn_steps", 30), "expert_epochs": ("--expert_epochs", 2),
        "max_start_epoch": ("--max_start_epoch", 20), "lr_img": ("--lr_img", 100), "lr_lr": ("--lr_lr", 1e-05),
        "lr_teacher": ("--lr_teacher", 0.001)},
        overrides=("init=real", "dsa=true", "batch_syn=0", "grad=unroll"), data="random_cifar10", style="mtt",
        zca=True, buffers="sgd",
        note="the unrolled graph grows with syn_steps (about 0.5 GB per student step here: ~15 GB at the "
             "published 30): lower it on both sides with --set syn_steps=N where memory is short"),
    # DATM: configs/CIFAR-10/ConvIN/IPC10.yaml (syn_steps 80, batch_syn 100, lr_img 100, ZCA, sequential generation
    # from 10 to 20 over 1000 iterations, soft labels lr 2 momentum 0.9, threshold 1); experts from buffer_FTD.py
    # (GSAM rho 0.01, alpha 0.3, as its README). Initialisation: 'real' on both sides instead of the published
    # 'samples_predicted_correctly' - it is outside the timed loop, the reference runs that search on cuda:0 unless
    # parall_eva, and on random data with a few short experts it may find no correctly classified image of a class
    # (the reference then indexes past its experts).
    "datm": Comparison("DATM", ("DATM.py",), "datm", shared={
        "syn_steps": ("--syn_steps", 80), "expert_epochs": ("--expert_epochs", 2),
        "max_start_epoch": ("--max_start_epoch", 20), "current_max_start_epoch": ("--current_max_start_epoch", 10),
        "min_start_epoch": ("--min_start_epoch", 0), "expansion_end_epoch": ("--expansion_end_epoch", 1000),
        "lr_img": ("--lr_img", 100), "lr_lr": ("--lr_lr", 1e-05), "lr_teacher": ("--lr_teacher", 0.01),
        "batch_syn": ("--batch_syn", 100), "lr_y": ("--lr_y", 2.0), "momentum_y": ("--Momentum_y", 0.9),
        "threshold": ("--threshold", 1.0), "init": ("--pix_init", "real")},
        overrides=("dsa=true", "sequential_generation=true", "label_epoch=-1", "grad=unroll"), data="random_cifar10",
        style="datm", cwd="distill", config="configs/CIFAR-10/ConvIN/IPC10.yaml", zca=True, buffers="gsam",
        note="the unrolled graph grows with syn_steps (about 0.5 GB per student step here: ~40 GB at the "
             "published 80): lower it on both sides with --set syn_steps=N where memory is short"),
    # IDC: condense.py --reproduce -d mnist -f 2 --ipc 10 (misc/reproduce.py: ConvNet-3, l1, lr_img 1e-4, n_data 500,
    # color_crop, vanilla mixup) against our configs/idc/mnist_ipc10.yaml. Listed in BLOCKED.
    "idc": Comparison("Efficient-Dataset-Condensation", (
        "condense.py", "--reproduce", "-d", "mnist", "-f", "2", "--ipc", "10", "--test"), "idc", style="idc"),
}

#: comparison -> why it cannot run on this machine (printed; the harness exits with status 3)
BLOCKED: dict[str, str] = {
    "idc": "IDC's reference needs CUDA: train.py, which condense.py imports, builds its normalisation tensors with "
           "device='cuda' at import time (mean_torch/std_torch), and condense(), Synthesizer, diffaug and the "
           "ClassMemDataLoader default to device='cuda' (.cuda() calls). This machine has no CUDA, and moving the "
           "reference to the CPU is not an allowed edit (only torch/scipy compatibility, an empty evaluation pool and "
           "one timing print). It would also need the efficientnet_pytorch package (imported by train.py/test.py), "
           "an empty evaluation (its --test flag does that) and a PERF_ITER print per outer iteration of "
           "condense() (it logs every niter/50 iterations only). On a CUDA machine both sides would have to run on "
           "the GPU (ours with --set device=cuda) for the timings to be comparable.",
}

SHIM_WANDB = '''"""No-op stand-in for wandb, the references' logger (scripts/perf/compare.py): nothing is logged."""
import sys
import types


class Config:
    def __init__(self, items=None):
        self._items = dict(items or {})


config = Config()
run = types.SimpleNamespace(name="perf-compare")


def init(*args, **kwargs):
    cfg = kwargs.get("config")
    sys.modules[__name__].config = Config(vars(cfg) if hasattr(cfg, "__dict__") else cfg)
    return run


def log(*args, **kwargs):
    pass


def finish(*args, **kwargs):
    pass


class Histogram:
    def __init__(self, *args, **kwargs):
        pass


class Image(Histogram):
    pass
'''

SHIM_SITE = '''"""scripts/perf/compare.py: the CIFAR-10 files are random stand-ins: torchvision skips their md5; with
PERF_PROFILE set, torch.profiler runs between two of the reference's timing prints (--profile-reference)."""
import os

if os.environ.get("PERF_RANDOM_CIFAR") == "1":
    import torchvision.datasets.cifar as _cifar

    _cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)

if os.environ.get("PERF_PROFILE"):  # --profile-reference: torch.profiler over the timed iterations only
    import builtins

    _print, _seen, _prof = builtins.print, [0], []

    def _profiling_print(*args, **kwargs):
        if args and args[0] == "PERF_ITER":
            index = _seen[0]
            _seen[0] += 1
            if index == int(os.environ["PERF_PROFILE_START"]):
                from torch.profiler import ProfilerActivity, profile

                _prof.append(profile(activities=[ProfilerActivity.CPU]))
                _prof[0].start()
            elif index == int(os.environ["PERF_PROFILE_STOP"]) and _prof:
                _prof[0].stop()
                table = _prof[0].key_averages().table(sort_by="self_cpu_time_total",
                                                      row_limit=int(os.environ["PERF_PROFILE_ROWS"]))
                with open(os.environ["PERF_PROFILE"], "w") as f:
                    f.write(table)
        return _print(*args, **kwargs)

    builtins.print = _profiling_print
'''

#: writes our experts (gendistill buffers) as the reference's replay_buffer_0.pt: per expert, per epoch, the list of
#: parameter tensors of the reference's ConvNet, after checking that its parameter names and shapes are ours, in order
CONVERT_DRIVER = '''
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
sys.path.insert(0, ".")
from networks import ConvNet
net = ConvNet(channel=3, num_classes=10, net_width=128, net_depth=3, net_act="relu", net_norm="instancenorm",
              net_pooling="avgpooling", im_size=(32, 32))
params = list(net.named_parameters())
ours, out = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((ours / "manifest.json").read_text())
theirs = [[n, list(p.shape)] for n, p in params]
mine = [list(x) for x in zip(manifest["network"]["param_names"], manifest["network"]["param_shapes"])]
if theirs != mine:
    sys.exit(f"parameter layouts differ: reference {theirs} vs ours {mine}")
sizes = [p.numel() for _, p in params]
experts = []
for e in manifest["experts"]:
    trajectory = load_file(str(ours / e["file"]))["trajectory"]  # [epochs + 1, num_params]
    experts.append([[t.reshape(p.shape).clone() for t, (_, p) in zip(row.split(sizes), params)]
                    for row in trajectory])
out.mkdir(parents=True, exist_ok=True)
torch.save(experts, out / "replay_buffer_0.pt")
print("CONVERTED", len(experts), len(experts[0]))
'''

EVAL_DRIVER = '''
import sys, time, json
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from utils import get_dataset, get_network, evaluate_synset, ParamDiffAug
data = torch.load(sys.argv[2])
(channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test,
 testloader) = get_dataset("MNIST", sys.argv[3])
class A: pass
args = A()
args.device = "cpu"; args.lr_net = 0.01; args.epoch_eval_train = int(sys.argv[4]); args.batch_train = 256
args.dsa = True; args.dsa_strategy = "color_crop_cutout_flip_scale_rotate"; args.dsa_param = ParamDiffAug()
args.dc_aug_param = None
for run in range(int(sys.argv[6])):
    torch.random.manual_seed(run)
    net = get_network(sys.argv[5], channel, num_classes, im_size)
    start = time.perf_counter()
    _, acc_train, acc_test = evaluate_synset(run, net, data["images"], data["labels"], testloader, args)
    print("PERF_EVAL", time.perf_counter() - start, acc_test, flush=True)
'''


def export_reference(ref: Path, dst: Path, reference: str) -> str:
    """Copy the reference into ``dst`` (a bare git directory is exported) and apply its ``PATCHES``; returns the
    commit. Stops when ``ref`` is not the repository ``reference`` names or a patch does not apply."""
    git_dir = ref if (ref / "HEAD").is_file() and (ref / "objects").is_dir() else ref / ".git"
    commit = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() if git_dir.exists() else "unknown"
    if git_dir == ref:  # bare; a mirror may lack its largest blobs (images): those files are left out
        tree = subprocess.run(["git", "--git-dir", str(ref), "ls-tree", "-r", "-z", "HEAD"], capture_output=True,
                              check=True).stdout.decode().split("\0")
        entries = [(line.split()[2], line.split("\t", 1)[1]) for line in tree if line and " blob " in line]
        check = subprocess.run(["git", "--git-dir", str(ref), "cat-file", "--batch-check"], capture_output=True,
                               check=True, input="".join(f"{sha}\n" for sha, _ in entries).encode()).stdout.decode()
        present = [path for (_, path), line in zip(entries, check.splitlines(), strict=True)
                   if not line.endswith("missing")]
        archive = subprocess.run(["git", "--git-dir", str(ref), "archive", "HEAD", "--", *present],
                                 capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True)
    else:
        shutil.copytree(ref, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
    repo, (marker, text) = REFERENCES[reference]
    if not (dst / marker).is_file() or text not in (dst / marker).read_text():
        raise SystemExit(f"{ref} is not {repo} (no {marker} with {text!r}); pass --ref for that repository")
    for name, edits in PATCHES[reference].items():
        path = dst / name
        if not path.is_file():
            raise SystemExit(f"patch target {name} is missing from {repo} (another reference version?)")
        source = path.read_text()
        for old, new in edits:
            if source.count(old) < 1:
                raise SystemExit(f"patch does not apply to {name}: {old[:60]!r} (another reference version?)")
            source = source.replace(old, new)
        path.write_text(source)
    return commit


def link_mnist(data_root: Path, dst: Path) -> Path:
    """The reference reads torchvision's MNIST layout under its --data_path: link the raw files (read-only data)."""
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in (data_root / "MNIST" / "raw").iterdir():
        if not (raw / f.name).exists():
            (raw / f.name).symlink_to(f)
    return dst


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_random_cifar(dst: Path, per_class: int, seed: int = 0) -> Path:
    """CIFAR-10-shaped random data in CIFAR-10's python layout (``dst/cifar-10-batches-py``): ``per_class`` training
    and ``per_class // 5`` test images per class (CIFAR-10: 5000 and 1000), shuffled, the training split in five
    batch files. Every image is 0.5 * its class's uniform random template + 0.5 * uniform noise (uint8), so the
    classes can be learned (CAFE's and DATM's accuracy-driven steps behave as on real data)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 3 * 32 * 32)).astype(np.float32)

    def split(n_per_class: int) -> tuple[Any, list[int]]:
        labels = rng.permutation(np.repeat(np.arange(10), n_per_class))
        noise = rng.integers(0, 256, size=(labels.size, 3 * 32 * 32)).astype(np.float32)
        return (0.5 * templates[labels] + 0.5 * noise).round().astype(np.uint8), labels.tolist()

    base = dst / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    x, y = split(per_class)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5)):
        with open(base / f"data_batch_{i + 1}", "wb") as fh:
            pickle.dump({"batch_label": f"random batch {i + 1} of 5", "data": x[part], "labels": [y[j] for j in part],
                         "filenames": [f"random_{j}.png" for j in part]}, fh, protocol=2)
    x, y = split(max(per_class // 5, 1))
    with open(base / "test_batch", "wb") as fh:
        pickle.dump({"batch_label": "random test batch", "data": x, "labels": y,
                     "filenames": [f"random_test_{j}.png" for j in range(len(y))]}, fh, protocol=2)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": len(y) // 5, "num_vis": 3072}, fh,
                    protocol=2)
    return dst


def run(cmd: list[str], cwd: Path, threads: int, env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "GENDISTILL_THREADS": str(threads), "WANDB_MODE": "disabled", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed in {cwd}:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def reference_env(work: Path, comp: Comparison) -> dict[str, str]:
    """The reference child's extra environment: the shims on its path (see the module docstring)."""
    shim = work / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "wandb.py").write_text(SHIM_WANDB)
    (shim / "sitecustomize.py").write_text(SHIM_SITE)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "PERF_RANDOM_CIFAR": "1" if comp.data == "random_cifar10" else "0"}


def summarise(times: list[float], losses: list[float], warmup: int) -> dict:
    steps = [b - a for a, b in zip(times, times[1:], strict=False)][warmup:]
    loss = losses[warmup + 1:] if len(losses) > warmup + 1 else losses
    return {"s_per_iteration_median": statistics.median(steps) if steps else math.nan, "iterations_timed": len(steps),
            "s_per_iteration_all": steps, "loss_mean": statistics.fmean(loss),
            "loss_std": statistics.pstdev(loss) if len(loss) > 1 else 0.0, "n_loss": len(loss)}


def shared_settings(comp: Comparison, sets: list[str], buffer_epochs: int | None) -> tuple[dict[str, Any], dict]:
    """The values both sides get: the comparison's, then ``--set``, then the start window clipped to the buffers."""
    values = {k: v for k, (_, v) in comp.shared.items()}
    changed = {}
    for item in sets:
        key, _, text = item.partition("=")
        if key not in values:
            raise SystemExit(f"--set {key}: not a shared setting of this comparison (one of {', '.join(values)})")
        old = values[key]
        values[key] = type(old)(text) if not isinstance(old, bool) else text.lower() in ("1", "true", "yes")
        changed[key] = {"published": old, "used": values[key]}
    if buffer_epochs is not None:  # start epochs t < max_start_epoch need t + expert_epochs <= the buffers' epochs
        top = buffer_epochs - values["expert_epochs"] + 1
        if top < 1:
            raise SystemExit(f"--expert-epochs {buffer_epochs} is below expert_epochs {values['expert_epochs']}")
        for key in ("max_start_epoch", "current_max_start_epoch"):
            if key in values and values[key] > top:
                changed[key] = {"published": values[key], "used": top, "why": "fits the short buffers"}
                values[key] = top
    return values, changed


def train_our_buffers(comp: Comparison, out_dir: Path, data_dir: Path, threads: int, experts: int,
                      epochs: int) -> dict[str, Any]:
    """Our side's expert buffers for ``comp`` (``gendistill buffers`` in ``out_dir``): its wall time and command."""
    ours = ["--quiet", "--threads", str(threads), "buffers", "--dataset", "cifar10", "--data-root", str(data_dir),
            "--out", str(out_dir), "--experts", str(experts), "--epochs", str(epochs), "--lr", "0.01",
            "--batch", "256", "--seed", "0", *(["--zca", "kornia"] if comp.zca else [])]
    if comp.buffers == "gsam":
        ours += ["--optimizer", "gsam", "--rho", "0.01", "--alpha", "0.3"]
    start = time.perf_counter()
    run([sys.executable, "-m", "gendistill.cli", *ours], REPO, threads)
    return {"ours_s": time.perf_counter() - start, "ours_command": " ".join(["gendistill", *ours])}


def make_buffers(comp: Comparison, ref_dir: Path, work: Path, data_dir: Path, threads: int, experts: int,
                 epochs: int, env: dict[str, str], reference_experts: str) -> dict:
    """Expert buffers (SGD 0.01 / GSAM rho 0.01 alpha 0.3, momentum 0, batch 256, DSA, ZCA), trained by ``gendistill
    buffers``. ``reference_experts``: ``ours`` gives the reference the same experts, converted to its
    ``replay_buffer_0.pt`` layout (``CONVERT_DRIVER``); ``own`` trains them with the reference's buffer script.

    Why ``ours`` is the default: both reference scripts record each snapshot as ``[p.detach().cpu() for p in
    net.parameters()]``, which on a CPU is the live parameter itself (no copy), so every snapshot of an expert is its
    final weights, the start-to-target distance is 0 and the reference's matching loss is inf on every iteration.
    That is the reference's CUDA assumption, and a copy there is not an allowed edit. With ``ours`` both sides match
    the very same trajectories. ``own`` is for a CUDA machine (where ``.cpu()`` copies).
    """
    out: dict[str, Any] = {"experts": experts, "epochs": epochs, "optimizer": comp.buffers,
                           "reference_experts": reference_experts,
                           **train_our_buffers(comp, work / "our_buffers", data_dir, threads, experts, epochs)}
    # the reference's expert folder: <buffer_path>/CIFAR10[_NO_ZCA]/ConvNet
    expert_dir = work / "ref_buffers" / ("CIFAR10" if comp.zca else "CIFAR10_NO_ZCA") / "ConvNet"
    if reference_experts == "ours":
        (work / "convert.py").write_text(CONVERT_DRIVER)
        run([sys.executable, str(work / "convert.py"), str(work / "our_buffers"), str(expert_dir)], ref_dir, threads,
            env)
        return out
    recipe = ["--dataset", "CIFAR10", "--model", "ConvNet", "--train_epochs", str(epochs), "--num_experts",
              str(experts), "--save_interval", str(experts), "--buffer_path", str(work / "ref_buffers"),
              "--data_path", str(data_dir), "--lr_teacher", "0.01", "--batch_train", "256", "--mom", "0"]
    recipe += ["--zca"] if comp.zca else []
    if comp.buffers == "gsam":
        script, cwd = "buffer_FTD.py", ref_dir / "buffer"
        recipe += ["--rho_max", "0.01", "--rho_min", "0.01", "--alpha", "0.3"]
    else:
        script, cwd = "buffer.py", ref_dir
    start = time.perf_counter()
    run([sys.executable, script, *recipe], cwd, threads, env)
    out["reference_s"] = time.perf_counter() - start
    out["reference_command"] = " ".join(["python", script, *recipe])
    return out


def reference_command(comp: Comparison, values: dict[str, Any], iterations: int, data_dir: Path, work: Path,
                      ref_dir: Path) -> tuple[list[str], str]:
    """The reference's command line and, for a ``config`` comparison, the YAML it reads (else ``""``)."""
    settings: dict[str, Any] = {flag.lstrip("-"): values[key] for key, (flag, _) in comp.shared.items()}
    settings.update(Iteration=iterations, data_path=str(data_dir))
    if comp.style == "dc":
        settings.update(num_exp=1, save_path=str(work / "save"))
    elif comp.style == "mtt":
        settings.update(buffer_path=str(work / "ref_buffers"))
    elif comp.style == "datm":  # an empty evaluation pool through DATM's own settings
        settings.update(buffer_path=str(work / "ref_buffers"), skip_first_eva=True, eval_it=10 ** 9)
    if not comp.config:
        return [sys.executable, *comp.script, *[a for k, v in settings.items() for a in (f"--{k}", str(v))]], ""
    import yaml

    # the published file with the shared settings and paths on top (a key the reference does not know stops it)
    text = yaml.safe_dump({**yaml.safe_load((ref_dir / comp.config).read_text()), **settings}, sort_keys=False)
    (work / "reference_config.yaml").write_text(text)
    return [sys.executable, *comp.script, "--cfg", str(work / "reference_config.yaml")], text


def _ours_env(compile_ours: bool, bf16: bool = False) -> dict[str, str]:
    """Our side's environment: ``torch.compile`` on or off (``--compile``) and the evaluation's bfloat16 autocast
    (``--bf16``), never inherited by accident."""
    return {"GENDISTILL_COMPILE": "1" if compile_ours else "0", "GENDISTILL_AUTOCAST": "bf16" if bf16 else "0"}


class Sides(NamedTuple):
    """What both sides of a method comparison share (:func:`_prepare_sides`)."""

    data_dir: Path
    dataset: str
    data: dict
    env: dict[str, str]
    values: dict[str, Any]
    changed: dict
    buffers: dict | None
    cmd: list[str]
    config: str


def describe_changed(changed: dict) -> str:
    """``changed from published: k used (published p), ...`` for the shared settings lowered, else ``published``."""
    if not changed:
        return "published"
    return "changed from published: " + ", ".join(f"{k} {v['used']} (published {v['published']})"
                                                 for k, v in changed.items())


def _prepare_sides(comp: Comparison, ref_dir: Path, work: Path, data_root: Path, iterations: int, threads: int,
                   sets: list[str], experts: int, expert_epochs: int, per_class: int, reference_experts: str) -> Sides:
    """What both sides of a method comparison share: the data (and its description), the reference's environment,
    the shared settings (and which were changed), the expert buffers, and the reference's command (and config)."""
    if comp.data == "random_cifar10":
        data_dir = make_random_cifar(work / "data", per_class)
        dataset, data = "cifar10", {"dataset": "random CIFAR-10-shaped (see make_random_cifar)",
                                    "train_per_class": per_class, "test_per_class": max(per_class // 5, 1)}
    else:
        data_dir = link_mnist(data_root, work / "data")
        dataset, data = "mnist", {"dataset": "MNIST", "data_root": str(data_root)}
    env = reference_env(work, comp)
    values, changed = shared_settings(comp, sets, expert_epochs if comp.buffers else None)
    buffers = make_buffers(comp, ref_dir, work, data_dir, threads, experts, expert_epochs, env, reference_experts) \
        if comp.buffers else None
    cmd, config = reference_command(comp, values, iterations, data_dir, work, ref_dir)
    return Sides(data_dir, dataset, data, env, values, changed, buffers, cmd, config)


def profile_reference(name: str, ref_dir: Path, work: Path, data_root: Path, iterations: int, threads: int,
                      warmup: int, sets: list[str], experts: int, expert_epochs: int, per_class: int,
                      reference_experts: str = "ours", rows: int = 15) -> str:
    """The reference side of ``compare.py NAME`` run once under ``torch.profiler`` (``--profile-reference``): the
    top operators by self CPU time over its timed iterations (those after ``warmup``), under a header of what ran."""
    comp = SETTINGS[name]
    sides = _prepare_sides(comp, ref_dir, work, data_root, iterations, threads, sets, experts, expert_epochs,
                           per_class, reference_experts)
    table_file = work / "reference_profile.txt"
    run(sides.cmd, ref_dir / comp.cwd, threads,
        {**sides.env, "PERF_PROFILE": str(table_file), "PERF_PROFILE_START": str(warmup),
         "PERF_PROFILE_STOP": str(iterations), "PERF_PROFILE_ROWS": str(rows)})
    if not table_file.is_file():
        raise SystemExit(f"the reference ran but wrote no profile (fewer than {iterations + 1} timing prints?)")
    what = sides.data["dataset"] + (f", {per_class} per class" if "train_per_class" in sides.data else "")
    if comp.buffers:
        what += f"; experts: {reference_experts}, {experts} x {expert_epochs} epochs"
    command = " ".join(sides.cmd[1:]).replace(str(work), "WORK")  # WORK: the harness's temporary work folder
    return (f"reference {name} ({REFERENCES[comp.reference][0]}): {iterations - warmup} outer iterations after "
            f"{warmup} warm-up, as compare.py {name}: {what}; {describe_changed(sides.changed)}\n"
            f"threads {threads}; {platform.processor() or platform.machine()}\n"
            f"command: python {command}\n\n{table_file.read_text()}\n")


def compare_method(name: str, ref_dir: Path, work: Path, data_root: Path, iterations: int, threads: int,
                   warmup: int, sets: list[str], experts: int, expert_epochs: int, per_class: int,
                   reference_experts: str = "ours", compile_ours: bool = False, ours_sets: tuple[str, ...] = (),
                   rounds: int = 1) -> dict:
    """Time both sides ``rounds`` times, alternating which goes first (reference first in round 0), so that a drift
    of the machine's speed over the run falls on both; the summaries pool every round's timed iterations."""
    comp = SETTINGS[name]
    data_dir, dataset, data, env, values, changed, buffers, cmd, config = _prepare_sides(
        comp, ref_dir, work, data_root, iterations, threads, sets, experts, expert_epochs, per_class,
        reference_experts)
    ours_cmd = ["--quiet", "--threads", str(threads), "distill", "--method", comp.method, "--dataset", dataset,
                "--ipc", "10", "--data-root", str(data_dir), "--set", f"iterations={iterations + 1}",
                *[a for k, v in values.items() for a in ("--set", f"{k}={v}")],
                *[a for o in (*comp.overrides, *ours_sets) for a in ("--set", o)],
                *(["--set", f"buffer={work / 'our_buffers'}"] if comp.buffers else []),
                *(["--zca", "kornia"] if comp.zca else []),
                "--log-every", "1", "--checkpoint-every", "0", "--out", str(work / "ours")]

    def time_reference(round_index: int) -> tuple[list[float], list[float]]:
        out = run(cmd, ref_dir / comp.cwd, threads, env)
        rows = [line.split() for line in out.splitlines() if line.startswith("PERF_ITER")]
        if not rows:
            raise SystemExit(f"the reference printed no PERF_ITER line:\n{out[-2000:]}")
        return [float(r[2]) for r in rows], [float(r[3]) for r in rows]

    def time_ours(round_index: int) -> list[dict]:
        # per-iteration wall time from metrics.jsonl (one line per iteration); a fresh run folder per round
        run_dir = work / ("ours" if round_index == 0 else f"ours_round{round_index}")
        args = [*ours_cmd[:-1], str(run_dir)]
        run([sys.executable, "-m", "gendistill.cli", *args], REPO, threads, _ours_env(compile_ours))
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    ref_rounds, our_rounds, firsts = alternate_rounds(rounds, time_reference, time_ours)
    lines = our_rounds[0]  # the first round's, for the metrics and the start-up time below
    ref_sums = [summarise(*r, warmup) for r in ref_rounds]
    our_sums = [summarise([x["elapsed_s"] for x in round_lines], [comp.our_loss(x) for x in round_lines], warmup)
                for round_lines in our_rounds]
    per_round = round_ratios(firsts, [s["s_per_iteration_median"] for s in ref_sums],
                             [s["s_per_iteration_median"] for s in our_sums])
    reference, ours = pooled_summary(ref_sums), pooled_summary(our_sums)
    extra = sorted({k for line in lines for k in line} - {"iteration", "elapsed_s", "loss"})
    ours["metrics_mean"] = {k: statistics.fmean(float(line[k]) for line in lines if k in line) for k in extra}
    ours["first_iteration_elapsed_s"] = lines[0]["elapsed_s"]  # start-up, and compilation under --compile
    result = {"reference": reference, "ours": ours, "data": data, "shared": values, "shared_changed": changed,
              "ours_compiled": compile_ours,
              "reference_command": " ".join(["python", *cmd[1:]]), "ours_command": " ".join(["gendistill", *ours_cmd]),
              "ours_overrides": list(comp.overrides), "ours_set": list(ours_sets)}
    if rounds > 1:
        result["rounds"] = per_round
    if config:
        result["reference_config"] = config
    if buffers:
        result["buffers"] = buffers
    if comp.note:
        result["note"] = comp.note
    return result


def alternate_rounds(rounds: int, time_reference: Callable[[int], Any],
                     time_ours: Callable[[int], Any]) -> tuple[list, list, list[str]]:
    """Run both sides ``rounds`` times, the reference first in even rounds and ours first in odd ones, so that a drift
    of the machine's speed over the run falls on both: each side's result per round, and which side went first."""
    reference, ours, firsts = [], [], []
    for i in range(rounds):
        first = "reference" if i % 2 == 0 else "ours"
        for side in (("reference", "ours") if first == "reference" else ("ours", "reference")):
            if side == "reference":
                reference.append(time_reference(i))
            else:
                ours.append(time_ours(i))
        firsts.append(first)
    return reference, ours, firsts


def round_ratios(firsts: list[str], reference_s: list[float], ours_s: list[float]) -> list[dict]:
    """The per-round record: which side went first, both sides' seconds and their ratio."""
    return [{"first": f, "reference_s": r, "ours_s": o, "ratio": r / o}
            for f, r, o in zip(firsts, reference_s, ours_s, strict=True)]


def pooled_summary(summaries: list[dict]) -> dict:
    """One side's summary over several rounds: the median and the loss statistics of every timed iteration."""
    if len(summaries) == 1:
        return summaries[0]
    steps = [t for s in summaries for t in s["s_per_iteration_all"]]
    means = [(s["loss_mean"], s["loss_std"], s["n_loss"]) for s in summaries]
    n = sum(k for _, _, k in means)
    mean = sum(m * k for m, _, k in means) / n
    var = sum(k * (sd ** 2 + (m - mean) ** 2) for m, sd, k in means) / n
    return {"s_per_iteration_median": statistics.median(steps) if steps else math.nan,
            "iterations_timed": len(steps), "s_per_iteration_all": steps, "loss_mean": mean,
            "loss_std": math.sqrt(var), "n_loss": n}


REFERENCE_NETWORKS = {"convnet": "ConvNet", "lenet": "LeNet", "alexnet": "AlexNet", "vgg11": "VGG11",
                      "resnet18": "ResNet18", "mlp": "MLP"}


def compare_evaluate(ref_dir: Path, work: Path, data_root: Path, epochs: int, threads: int, model: str = "convnet",
                     runs: int = 1, compile_ours: bool = False, bf16: bool = False, rounds: int = 1) -> dict:
    """One ``dsa``-recipe evaluation of random real MNIST IPC 10 per side, ``runs`` networks each (the reference's
    run ``i`` seeds torch with ``i``; ours are the protocol's seeded runs): seconds and test accuracy per run.
    ``compile_ours``: our side under ``GENDISTILL_COMPILE=1``; its seconds per run are the mean over the runs, so the
    first run's compilation is spread over them. ``bf16``: our networks train and test under bfloat16 autocast
    (``GENDISTILL_AUTOCAST=bf16``; the reference has no such option). ``rounds``: both sides that many times,
    alternating which goes first (:func:`alternate_rounds`); seconds pooled over the rounds, accuracies of the first
    round (every round trains the same seeded networks)."""
    import torch

    import gendistill

    splits = gendistill.load_dataset("mnist", str(data_root))
    syn = gendistill.distill("random", splits, ipc=10, progress=False)
    images, labels = syn.materialize()
    torch.save({"images": images, "labels": labels}, work / "set.pt")
    (work / "driver.py").write_text(EVAL_DRIVER)
    syn.save(work / "synset")
    ref_cmd = [sys.executable, str(work / "driver.py"), str(ref_dir), str(work / "set.pt"),
               str(link_mnist(data_root, work / "data")), str(epochs), REFERENCE_NETWORKS[model], str(runs)]
    code = ("import json, sys, time, gendistill\n"
            f"splits = gendistill.load_dataset('mnist', {str(data_root)!r})\n"
            f"syn = gendistill.load_synset({str(work / 'synset')!r})\n"
            "start = time.perf_counter()\n"
            f"r = gendistill.evaluate(syn, splits.test, 'dsa', model={model!r}, runs={runs}, epochs={epochs}, "
            "progress=False)\n"
            "print('PERF_EVAL', (time.perf_counter() - start) / len(r.accs), json.dumps(r.accs))\n")

    def time_reference(round_index: int) -> list[tuple[float, float]]:
        out = run(ref_cmd, ref_dir, threads)
        rows = [line.split()[1:] for line in out.splitlines() if line.startswith("PERF_EVAL")]
        if not rows:
            raise SystemExit(f"the reference's evaluation printed no PERF_EVAL line:\n{out[-2000:]}")
        return [(float(s), 100 * float(acc)) for s, acc in rows]

    def time_ours(round_index: int) -> tuple[float, list[float]]:
        out = run([sys.executable, "-c", code], REPO, threads, _ours_env(compile_ours, bf16))
        seconds, accs = next(line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("PERF_EVAL"))
        return float(seconds), [float(a) for a in json.loads(accs)]

    ref_rounds, our_rounds, firsts = alternate_rounds(rounds, time_reference, time_ours)
    ref_accs, our_accs = [acc for _, acc in ref_rounds[0]], our_rounds[0][1]
    result = {"model": model, "epochs": epochs, "runs": runs, "ours_compiled": compile_ours,
              "ours_autocast": "bf16" if bf16 else None,
              "reference": {"s_per_run": statistics.median(s for rows in ref_rounds for s, _ in rows),
                            "accuracy": statistics.fmean(ref_accs), "accuracies": ref_accs},
              "ours": {"s_per_run": statistics.median(s for s, _ in our_rounds),
                       "accuracy": statistics.fmean(our_accs), "accuracies": our_accs}}
    if rounds > 1:
        result["rounds"] = round_ratios(firsts, [statistics.median(s for s, _ in rows) for rows in ref_rounds],
                                        [s for s, _ in our_rounds])
    return result


def machine_probe(threads: int) -> dict:
    """The machine's current speed (``machine_probe.py``, in a child on ``threads`` threads): recorded before and
    after a comparison, so that records taken at different times can be told apart by the machine's state."""
    out = run([sys.executable, str(Path(__file__).resolve().parent / "machine_probe.py"), "--threads", str(threads)],
              REPO, threads)
    return json.loads(next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("PROBE ")))


def machine() -> dict:
    import torch

    from gendistill.utils.resources import cpu_info

    cpu = cpu_info()
    return {"cpu": cpu["model"], "cpu_family": cpu["family"], "avx512f": "avx512f" in cpu["flags"],
            "avx512_bf16": "avx512_bf16" in cpu["flags"], "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("comparison", choices=[*SETTINGS, "evaluate"])
    ap.add_argument("--ref", required=True, help="reference checkout (or bare git directory)")
    ap.add_argument("--data-root", default=os.environ.get("GENDISTILL_DATA", ""))
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=100, help="evaluate: training epochs of the dsa recipe")
    ap.add_argument("--compile", action="store_true", help="our side with GENDISTILL_COMPILE=1 (torch.compile; "
                    "evaluate: the first run's compilation is counted, spread over --runs; methods: it falls in the "
                    "first, untimed iteration)")
    ap.add_argument("--model", choices=sorted(REFERENCE_NETWORKS), default="convnet",
                    help="evaluate: the network both sides train")
    ap.add_argument("--runs", type=int, default=1, help="evaluate: networks per side (accuracy of each recorded)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change a shared setting on both sides (a reduced trial; recorded)")
    ap.add_argument("--bf16", action="store_true", help="evaluate: our networks train and test under bfloat16 "
                    "autocast (GENDISTILL_AUTOCAST=bf16; needs avx512_bf16/AMX)")
    ap.add_argument("--ours-set", dest="ours_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="methods: a setting of our side only, recorded and labelled in the table (e.g. "
                         "amp_real=true, the bfloat16 real side, an option the reference does not have)")
    ap.add_argument("--experts", type=int, default=2, help="mtt/datm: experts per side")
    ap.add_argument("--expert-epochs", type=int, default=3, help="mtt/datm: epochs per expert")
    ap.add_argument("--reference-experts", choices=["ours", "own"], default="ours",
                    help="mtt/datm: the reference distills from our experts converted to its layout (default; its "
                         "own buffer scripts alias every snapshot on a CPU, see make_buffers) or from its own")
    ap.add_argument("--random-per-class", type=int, default=5000,
                    help="cafe/mtt/datm: random training images per class (CIFAR-10: 5000)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time both sides this many times, alternating which goes first, and pool the timed "
                         "iterations (a drift of the machine's speed then falls on both sides; per-round ratios "
                         "recorded)")
    ap.add_argument("--profile-reference", type=Path, default=None, metavar="FILE",
                    help="methods: run only the reference, once, under torch.profiler over its timed iterations, and "
                         "write its top operators by self CPU time to FILE (no timing record)")
    ap.add_argument("--no-probe", action="store_true",
                    help="skip the machine probe (machine_probe.py) run before and after the comparison")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="work in DIR (must be new or empty) and keep the patched reference, data, buffers and runs")
    args = ap.parse_args(argv)
    if args.comparison != "evaluate" and args.warmup >= args.iterations:
        # iterations + 1 are run and timed between their ends; the first --warmup of those intervals are dropped
        ap.error(f"--warmup {args.warmup} leaves no timed iteration of --iterations {args.iterations}; "
                 f"use --warmup {max(args.iterations - 1, 0)} or more --iterations")
    if args.rounds < 1:
        ap.error("--rounds takes a positive count")
    if args.ours_sets and args.comparison == "evaluate":
        ap.error("--ours-set applies to the method comparisons; evaluate takes --compile and --bf16")
    if args.profile_reference and (args.comparison == "evaluate" or args.rounds > 1 or args.compile
                                   or args.ours_sets or args.json):
        ap.error("--profile-reference runs one method's reference alone: it takes no --rounds, --compile, --ours-set "
                 "or --json, and not evaluate")
    if args.bf16 and args.comparison != "evaluate":
        ap.error("--bf16 applies to evaluate; a method's bfloat16 real side is --ours-set amp_real=true")
    if args.comparison in BLOCKED:
        print(f"BLOCKED {args.comparison}: {BLOCKED[args.comparison]}", file=sys.stderr)
        return 3
    data_root = Path(args.data_root).resolve()
    reference = SETTINGS[args.comparison].reference if args.comparison != "evaluate" else "DatasetCondensation"
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        raise SystemExit(f"--keep {args.keep}: the folder is not empty")
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="gendistill-perf-") \
            as tmp:
        ref_dir, work = Path(tmp) / "reference", Path(tmp) / "work"
        ref_dir.mkdir(parents=True)
        work.mkdir()
        commit = export_reference(Path(args.ref), ref_dir, reference)
        start = time.perf_counter()
        probe_before = None if args.profile_reference or args.no_probe else machine_probe(args.threads)
        if args.profile_reference:
            table = profile_reference(args.comparison, ref_dir, work, data_root, args.iterations, args.threads,
                                      args.warmup, args.sets, args.experts, args.expert_epochs,
                                      args.random_per_class, args.reference_experts)
            harness = " ".join(["python", "scripts/perf/compare.py", *(argv or sys.argv[1:])])
            header = f"{table.splitlines()[0]}\nreference commit {commit}\nharness: {harness}\n"
            text = header + "\n".join(table.splitlines()[1:]) + "\n"
            args.profile_reference.parent.mkdir(parents=True, exist_ok=True)
            args.profile_reference.write_text(text)
            print(text)
            return 0
        if args.comparison == "evaluate":
            result = compare_evaluate(ref_dir, work, data_root, args.epochs, args.threads, args.model, args.runs,
                                      args.compile, args.bf16, args.rounds)
            result["ratio"] = result["reference"]["s_per_run"] / result["ours"]["s_per_run"]
        else:
            result = compare_method(args.comparison, ref_dir, work, data_root, args.iterations, args.threads,
                                    args.warmup, args.sets, args.experts, args.expert_epochs, args.random_per_class,
                                    args.reference_experts, args.compile, tuple(args.ours_sets), args.rounds)
            r, o = result["reference"], result["ours"]
            result["ratio"] = r["s_per_iteration_median"] / o["s_per_iteration_median"]
            se = math.sqrt(r["loss_std"] ** 2 / max(r["n_loss"], 1) + o["loss_std"] ** 2 / max(o["n_loss"], 1))
            result["losses_agree"] = abs(r["loss_mean"] - o["loss_mean"]) <= 3 * se + 1e-12
    result.update(comparison=args.comparison, reference_repo=REFERENCES[reference][0], reference_commit=commit,
                  threads=args.threads, machine=machine(), wall_s=time.perf_counter() - start,
                  **({} if probe_before is None else {"probe_before": probe_before,
                                                      "probe_after": machine_probe(args.threads)}),
                  command=" ".join(["python", "scripts/perf/compare.py", *(argv or sys.argv[1:])]))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
