"""Best-of-run set selection (MTT/DATM's published statistic) and the best-over-epochs figure of the teacher
protocol (DD-Ranking's), next to the final-epoch headline."""

import json

import pytest

from gendistill.cli import main
from gendistill.data.datasets import load_dataset
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import PROTOCOLS
from gendistill.synset.format import SyntheticSet
from gendistill.utils.seeding import derive_seed

DM = ["distill", "--method", "dm", "--dataset", "mnist", "--ipc", "1", "--preset", "smoke", "--set", "iterations=5"]
SELECT = ["--best-of-run", "2", "--best-of-run-runs", "2", "--best-of-run-epochs", "3"]


def _run(args, capsys) -> str:
    code = main(["--quiet", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_best_of_run_keeps_the_best_periodic_set_and_its_evaluation_reports_it(tmp_path, data_env, capsys):
    out = tmp_path / "run"
    _run([*DM, *SELECT, "--out", str(out)], capsys)
    record = json.loads((out / "best_of_run.json").read_text())
    history = record["history"]
    assert [h["iteration"] for h in history] == [2, 4, 5]  # every 2 iterations and after the last
    best = max(history, key=lambda h: h["mean"])
    assert record["iteration"] == best["iteration"] and record["mean"] == best["mean"]
    assert "epochs 3 of 1000" in record["reduced_note"] and "test split" in record["selected_on"]

    final = SyntheticSet.load(out / "synset")
    assert final.meta["best_of_run"]["mean"] == best["mean"]
    # the kept set is the one that was evaluated: its evaluation with the same seed gives the recorded figure
    splits = load_dataset("mnist", str(data_env))
    kept = SyntheticSet.load(out / "best_synset")
    again = evaluate(kept, splits.test, "dsa", runs=2, epochs=3, progress=False,
                     seed=derive_seed(0, "best-of-run", best["iteration"]))
    assert again.accs == best["accs"]

    # the final set's evaluation under the same protocol carries the best figure beside its final-epoch mean
    result = evaluate(final, splits.test, "dsa", runs=1, epochs=2, progress=False)
    assert result.best_mean == best["mean"] and result.best_over == "distillation checkpoints"
    assert result.best_iteration == best["iteration"]
    assert result.reduced and "best-of-run evaluations: epochs 3 of 1000" in result.reduced_note
    assert "best distillation checkpoint" in result.summary()
    # ... and under another protocol it does not
    assert evaluate(final, splits.test, "dc", runs=1, epochs=2, progress=False).best_mean is None


def test_best_of_run_resumes_from_the_record_alone(tmp_path, data_env, capsys):
    """``distill --resume --out DIR`` continues the selection recorded in the run folder."""
    out = tmp_path / "run"
    _run([*DM, *SELECT, "--checkpoint-every", "2", "--out", str(out)], capsys)
    first = json.loads((out / "best_of_run.json").read_text())
    (out / "synset" / "synset.json").unlink()  # as if killed after the last evaluation, before the set was written
    (out / "best_of_run.json").write_text(json.dumps({**first, "history": first["history"][:1]}))
    _run(["distill", "--resume", "--out", str(out)], capsys)
    again = json.loads((out / "best_of_run.json").read_text())
    assert again["history"] == first["history"]


@pytest.mark.parametrize("bad", [["--best-of-run", "2", "--best-of-run-runs", "0"]])
def test_best_of_run_bad_settings_are_one_line_errors(tmp_path, data_env, capsys, bad):
    code = main(["--quiet", *DM, *bad, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "runs >= 1" in err[0]


def test_best_of_run_refuses_a_one_shot_method(tmp_path, data_env, capsys):
    code = main(["--quiet", "distill", "--method", "random", "--dataset", "mnist", "--ipc", "1",
                 "--best-of-run", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "iterative method" in err


def test_teacher_protocol_reports_dd_rankings_best_over_epochs_tested_every_ten():
    teacher = PROTOCOLS["teacher"]
    assert teacher.epochs // teacher.eval_count == 10
