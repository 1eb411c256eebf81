import dataclasses

import pytest
import torch

from gendistill.data.preprocessing import Preprocessing
from gendistill.evaluation.evaluate import evaluate
from gendistill.evaluation.protocols import PROTOCOLS, EvalProtocol, get_protocol
from gendistill.evaluation.trainer import _lr_at
from gendistill.synset.format import SyntheticSet
from gendistill.utils.errors import GendistillError, NonFiniteLossError


def _synset(train, per_class=3, **kw):
    idx = train.sample_indices(per_class, torch.Generator().manual_seed(0)).reshape(-1)
    return SyntheticSet(train.images(idx), train.labels[idx], train.class_names, train.preprocessing,
                        meta={"method": "test", "dataset": "tiny"}, **kw)


TINY = EvalProtocol(name="dc", model="convnet_w8", epochs=6, batch_size=16, runs=2)


def test_presets_match_reference():
    dc, dsa = PROTOCOLS["dc"], PROTOCOLS["dsa"]
    idc = get_protocol("idc")  # a method's own protocol: registered when its module loads (on first use)
    assert (dc.epochs, dc.lr, dc.momentum, dc.weight_decay, dc.batch_size, dc.dsa_strategy) == \
        (300, 0.01, 0.9, 5e-4, 256, "")
    assert dsa.epochs == 1000 and "flip" in dsa.dsa_strategy and get_protocol("mtt").lr_from_synset
    assert idc.batch_size == 64 and idc.cutmix_prob == 0.5 and "cutout" not in idc.dsa_strategy
    assert PROTOCOLS["soft"].label_loss == "soft_ce"


def test_step_schedule_follows_reference_off_by_one():
    p = EvalProtocol(epochs=300)
    lrs = [_lr_at(p, 0.01, 301, e) for e in range(301)]
    assert lrs[151] == 0.01 and lrs[152] == pytest.approx(0.001) and len(lrs) == 301
    m = EvalProtocol(epochs=299, schedule="multistep")
    assert _lr_at(m, 1.0, 300, 199) == 1.0 and _lr_at(m, 1.0, 300, 200) == pytest.approx(0.2)
    assert _lr_at(m, 1.0, 300, 250) == pytest.approx(0.04)


def test_batched_ensemble_equals_sequential_runs(tiny_train, tiny_test):
    import copy

    from gendistill.evaluation.trainer import _Trainer
    from gendistill.nn.augment import DSA
    from gendistill.nn.nets import create_network
    from gendistill.utils.seeding import make_generator

    syn = _synset(tiny_train)
    proto = dataclasses.replace(TINY, epochs=3, dsa_strategy="color_crop_scale", cutmix_prob=0.5)
    trainer = _Trainer(proto, syn.images, syn.labels, 0.01, DSA("color_crop_scale"), torch.device("cpu"))
    nets = [create_network("convnet_w8", 1, 10, 16, seed=s) for s in (1, 2)]

    class Bar:
        def update(self, n):
            pass

    seq = [copy.deepcopy(n) for n in nets]
    for i, net in enumerate(seq):
        trainer.train_sequential(net, make_generator(10 + i), Bar())
    params, _, _, _ = trainer.train_batched(nets, [make_generator(10), make_generator(11)], Bar())
    for i, net in enumerate(seq):
        for name, p in net.named_parameters():
            assert torch.allclose(params[name][i], p, atol=1e-4), name
    # and through evaluate(): both modes report the same accuracies
    a = evaluate(syn, tiny_test, dataclasses.replace(TINY, ensemble="sequential"), progress=False)
    b = evaluate(syn, tiny_test, dataclasses.replace(TINY, ensemble="batched"), progress=False)
    assert a.ensemble == "sequential" and b.ensemble == "batched" and a.accs == pytest.approx(b.accs, abs=2.01)


def test_same_seed_same_result_and_learns(tiny_train, tiny_test):
    syn = _synset(tiny_train, per_class=6)
    p = dataclasses.replace(TINY, epochs=30, runs=2, lr=0.05)
    a = evaluate(syn, tiny_test, p, seed=3, progress=False)
    b = evaluate(syn, tiny_test, p, seed=3, progress=False)
    assert a.accs == b.accs and a.mean > 40  # 10 classes: chance is 10 %
    assert a.std == pytest.approx(float(torch.tensor(a.accs).std(unbiased=False)), abs=1e-6)
    assert a.protocol["epochs"] == 30 and a.protocol["model"] == "convnet_w8"


def test_reduced_runs_are_labelled(tiny_train, tiny_test):
    r = evaluate(_synset(tiny_train), tiny_test, "dc", model="convnet_w8", epochs=2, runs=1, progress=False)
    assert r.reduced and "epochs 2 of 300" in r.reduced_note and "runs 1 of 5" in r.reduced_note
    assert "reduced" in r.summary()
    d = r.to_dict()
    assert {"mean", "std", "accs", "protocol"} <= set(d) and d["protocol"]["name"] == "dc"


def test_preprocessing_mismatch_refused(tiny_train, tiny_test):
    syn = _synset(tiny_train)
    syn.preprocessing = Preprocessing((0.5,), (0.5,))
    with pytest.raises(GendistillError, match="different space"):
        evaluate(syn, tiny_test, TINY, progress=False)


def test_soft_labels_and_learned_lr(tiny_train, tiny_test):
    syn = _synset(tiny_train)
    soft = SyntheticSet(syn.images, torch.nn.functional.one_hot(syn.labels, 10).float() * 5, syn.class_names,
                        syn.preprocessing)
    with pytest.raises(GendistillError, match="soft"):
        evaluate(soft, tiny_test, TINY, progress=False)
    r = evaluate(soft, tiny_test, dataclasses.replace(TINY, label_loss="soft_ce", runs=1), progress=False)
    assert 0 <= r.mean <= 100
    with pytest.raises(GendistillError, match="learned lr"):
        evaluate(syn, tiny_test, dataclasses.replace(TINY, lr_from_synset=True), progress=False)
    syn.lr = 0.02
    r = evaluate(syn, tiny_test, dataclasses.replace(TINY, lr_from_synset=True, runs=1), progress=False)
    assert r.protocol["lr_from_synset"]


def test_divergence_is_reported(tiny_train, tiny_test):
    syn = _synset(tiny_train)
    with pytest.raises(NonFiniteLossError, match="NaN"):
        evaluate(syn, tiny_test, dataclasses.replace(TINY, lr=1e12, runs=1, ensemble="sequential"), progress=False)


def test_protocol_yaml_and_unknown(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("name: dsa\nepochs: 7\nmodel: convnet_d4\n")
    p = get_protocol(str(f))
    assert p.epochs == 7 and p.dsa_strategy and p.model == "convnet_d4"
    with pytest.raises(GendistillError, match="unknown protocol"):
        get_protocol("dcc")


def test_a_result_records_only_the_protocol_fields_that_applied(tiny_train, tiny_test):
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.evaluation.protocols import applied_fields, get_protocol
    from gendistill.synset.format import SyntheticSet

    syn = SyntheticSet(tiny_train.images()[:20], tiny_train.labels[:20], tiny_train.class_names,
                       tiny_train.preprocessing, meta={"method": "random"})
    p = evaluate(syn, tiny_test, "dsa", model="convnet_w8", runs=1, epochs=1, progress=False).protocol
    assert p["schedule"] == "step_half" and "milestones" not in p and "gamma" not in p
    assert "cutmix_beta" not in p and "crop_scale" not in p and "temperature" not in p and "epochs_aug" not in p
    idc = applied_fields(get_protocol("idc"))
    assert idc["milestones"] == [2 / 3, 5 / 6] and idc["gamma"] == 0.2 and idc["cutmix_beta"] == 1.0


def test_teacher_protocol_relabels_every_augmented_view_for_hard_and_soft_sets(tiny_train, tiny_test, monkeypatch):
    import torch.nn.functional as F

    from gendistill.evaluation import trainer
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.evaluation.protocols import get_protocol
    from gendistill.synset.format import SyntheticSet

    proto = get_protocol("teacher", model="convnet_w8", teacher="convnet_w8", teacher_epochs=2, epochs=1, runs=1)
    assert proto.label_loss == "kl" and proto.temperature == 20.0 and proto.cutmix_prob == 1.0
    seen = []
    real_batch = trainer._Trainer._batch

    def spy(self, perm, start, gen):
        xb, yb, yb2, lam = real_batch(self, perm, start, gen)
        seen.append((xb.detach().clone(), yb.detach().clone(), self.teacher))
        return xb, yb, yb2, lam

    monkeypatch.setattr(trainer._Trainer, "_batch", spy)
    hard = SyntheticSet(tiny_train.images()[:20], tiny_train.labels[:20], tiny_train.class_names,
                        tiny_train.preprocessing, meta={"method": "random"})
    result = evaluate(hard, tiny_test, proto, train=tiny_train, progress=False)
    xb, yb, teacher = seen[-1]
    assert yb.dim() == 2 and torch.allclose(yb, F.softmax(teacher(xb) / 20.0, dim=1))  # the teacher's view labels
    assert result.teacher["recipe"]["model"] == "convnet_w8" and result.protocol["teacher"] == "convnet_w8"
    assert 0.0 <= result.teacher["test_accuracy"] <= 100.0  # the teacher's own accuracy on the test split
    soft = SyntheticSet(hard.images, F.one_hot(hard.labels, 10).float(), hard.class_names, hard.preprocessing,
                        meta={"method": "datm"})
    again = evaluate(soft, tiny_test, proto, train=tiny_train, progress=False)  # soft labels: relabelled too
    assert again.teacher["cache"] in ("memory",) or "safetensors" in again.teacher["cache"]
    with pytest.raises(GendistillError, match="training split"):
        evaluate(hard, tiny_test, proto, progress=False)


def test_a_teacher_trained_fewer_epochs_than_the_presets_marks_the_result_reduced(tiny_train, tiny_test):
    from gendistill.evaluation.evaluate import evaluate
    from gendistill.evaluation.protocols import PROTOCOLS
    from gendistill.synset.format import SyntheticSet

    hard = SyntheticSet(tiny_train.images()[:20], tiny_train.labels[:20], tiny_train.class_names,
                        tiny_train.preprocessing, meta={"method": "random"})
    result = evaluate(hard, tiny_test, "teacher", model="convnet_w8", runs=1, epochs=2, teacher_epochs=1,
                      eval_count=1, train=tiny_train, progress=False)
    preset = PROTOCOLS["teacher"]
    assert result.protocol["teacher_epochs"] == 1 and result.teacher["recipe"]["epochs"] == 1
    assert result.reduced and f"teacher trained 1 of {preset.teacher_epochs} epochs" in result.reduced_note
    assert f"tested 1 of {preset.eval_count} times" in result.reduced_note and result.protocol["eval_count"] == 1
    with pytest.raises(GendistillError, match="teacher_epochs"):
        evaluate(hard, tiny_test, "teacher", model="convnet_w8", runs=1, epochs=1, teacher_epochs=0,
                 train=tiny_train, progress=False)
