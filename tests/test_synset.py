import json

import pytest
import torch

from gendistill.data.preprocessing import Preprocessing, fit_zca
from gendistill.synset.format import SyntheticSet
from gendistill.synset.interop import import_dc_pt, import_mtt_dir
from gendistill.utils.errors import SynsetFormatError


def _syn(n_per_class=2, soft=False, zca=None):
    x = torch.randn(10 * n_per_class, 1, 8, 8)
    y = torch.arange(10).repeat_interleave(n_per_class)
    if soft:
        y = torch.nn.functional.one_hot(y, 10).float() * 4 + 0.1 * torch.randn(len(y), 10)
    pre = Preprocessing((0.1307,), (0.3081,), zca)
    return SyntheticSet(x, y, [f"c{i}" for i in range(10)], pre, lr=0.01 if soft else None,
                        meta={"method": "dm", "dataset": "mnist", "config": {"a": 1}})


@pytest.mark.parametrize("soft", [False, True])
def test_save_load_round_trip(tmp_path, soft):
    syn = _syn(soft=soft)
    syn.save(tmp_path / "s")
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"synset.safetensors", "synset.json", "grid.png"}
    back = SyntheticSet.load(tmp_path / "s")
    assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
    assert back.lr == syn.lr and back.meta == syn.meta and back.class_names == syn.class_names
    assert back.preprocessing.same_space(syn.preprocessing) and back.ipc == 2 and back.soft == soft


def test_round_trip_keeps_zca(tmp_path):
    zca = fit_zca(torch.rand(200, 1, 8, 8), "kornia", 0.1)
    syn = _syn(zca=zca)
    syn.save(tmp_path / "s")
    back = SyntheticSet.load(tmp_path / "s")
    assert back.preprocessing.zca is not None and back.preprocessing.same_space(syn.preprocessing)
    assert torch.allclose(back.to_pixels(), syn.to_pixels())


def test_save_is_atomic_replace(tmp_path):
    _syn().save(tmp_path / "s")
    _syn(n_per_class=3).save(tmp_path / "s")
    assert SyntheticSet.load(tmp_path / "s").ipc == 3
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folders left behind


def test_truncated_or_modified_files_refused(tmp_path):
    _syn().save(tmp_path / "s")
    tensor_file = tmp_path / "s" / "synset.safetensors"
    data = tensor_file.read_bytes()
    tensor_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(SynsetFormatError, match="truncated or modified"):
        SyntheticSet.load(tmp_path / "s")
    _syn().save(tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "synset.json").read_text())
    meta["num_images"] = 99
    (tmp_path / "t" / "synset.json").write_text(json.dumps(meta))
    with pytest.raises(SynsetFormatError, match="says 99"):
        SyntheticSet.load(tmp_path / "t")
    (tmp_path / "t" / "synset.json").write_text("{broken")
    with pytest.raises(SynsetFormatError, match="not valid JSON"):
        SyntheticSet.load(tmp_path / "t")
    with pytest.raises(SynsetFormatError, match="not a folder"):
        SyntheticSet.load(tmp_path / "missing")


def test_inconsistent_sets_refused():
    with pytest.raises(SynsetFormatError, match="labels"):
        SyntheticSet(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"], Preprocessing((0.0,), (1.0,)))
    with pytest.raises(SynsetFormatError, match="0..1"):
        SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), ["a", "b"], Preprocessing((0.0,), (1.0,)))
    with pytest.raises(SynsetFormatError, match="NaN"):
        SyntheticSet(torch.full((1, 1, 4, 4), float("nan")), torch.tensor([0]), ["a"], Preprocessing((0.0,), (1.0,)))


def test_export_imagefolder_denormalises(tmp_path):
    from PIL import Image

    syn = _syn()
    syn.images[0] = (torch.zeros(1, 8, 8) - 0.1307) / 0.3081  # pixel value 0
    syn.images[1] = (torch.ones(1, 8, 8) - 0.1307) / 0.3081  # pixel value 255
    syn.to_imagefolder(tmp_path / "f")
    lines = (tmp_path / "f" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 20
    assert json.loads(lines[0]) == {"file_name": "000_c0/00000.png", "label": 0, "class_name": "c0"}
    import numpy as np

    assert np.asarray(Image.open(tmp_path / "f" / "000_c0" / "00000.png")).max() == 0
    assert np.asarray(Image.open(tmp_path / "f" / "000_c0" / "00001.png")).min() == 255


def test_subset_takes_first_per_class():
    syn = _syn(n_per_class=5)
    sub = syn.subset(2)
    assert len(sub) == 20 and sub.ipc == 2 and torch.equal(sub.images[:2], syn.images[:2])


def test_import_dc_res_pt(tmp_path):
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10)
    torch.save({"data": [[x, y]], "accs_all_exps": {"ConvNet": [0.5]}}, tmp_path / "res_DC_MNIST_ConvNet_1ipc.pt")
    spec = ([str(i) for i in range(10)], Preprocessing((0.1307,), (0.3081,)))
    syn = import_dc_pt(tmp_path / "res_DC_MNIST_ConvNet_1ipc.pt", spec)
    assert torch.equal(syn.images, x) and syn.meta["method"] == "dc"


def test_import_refuses_pickled_objects_unless_trusted(tmp_path):
    import numpy as np

    x, y = torch.randn(10, 1, 8, 8), torch.arange(10)
    torch.save({"data": [[x, y]], "accs": np.float64(0.5), "obj": np.dtype("float32")}, tmp_path / "res.pt")
    spec = ([str(i) for i in range(10)], Preprocessing((0.1307,), (0.3081,)))
    with pytest.raises(SynsetFormatError, match="trust-pickle"):
        import_dc_pt(tmp_path / "res.pt", spec)
    assert len(import_dc_pt(tmp_path / "res.pt", spec, trust_pickle=True)) == 10


def test_import_mtt_dir(tmp_path):
    x, y = torch.randn(20, 3, 8, 8), torch.arange(10).repeat_interleave(2)
    torch.save(x, tmp_path / "images_best.pt")
    torch.save(y, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0123), tmp_path / "lr_best.pt")
    spec = ([str(i) for i in range(10)], Preprocessing((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)))
    syn = import_mtt_dir(tmp_path, spec)
    assert syn.lr == pytest.approx(0.0123) and syn.ipc == 2
    torch.save(torch.randn(20, 10), tmp_path / "labels_best.pt")  # DATM soft labels
    assert import_mtt_dir(tmp_path, spec, method="datm").soft
    (tmp_path / "images_best.pt").write_bytes(b"garbage")
    with pytest.raises(SynsetFormatError):
        import_mtt_dir(tmp_path, spec)


def test_with_hard_labels_takes_the_argmax_and_records_it():
    syn = _syn(soft=True)
    hard = syn.with_hard_labels()
    assert not hard.soft and torch.equal(hard.labels, torch.arange(10).repeat_interleave(2))
    assert hard.meta["labels_hardened"] and "labels_hardened" not in syn.meta and hard.lr == syn.lr
    assert torch.equal(hard.images, syn.images)
    plain = _syn()
    assert plain.with_hard_labels() is plain
