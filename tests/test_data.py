"""Dataset loaders, on the real FashionMNIST and on small files written here in each
dataset's standard format; corrupt and missing files; subsets; augmentation."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from breakeven import data as bdata
from breakeven.data import (
    CorruptDatasetError,
    Dataset,
    DatasetNotFoundError,
    augment_crop_flip,
    list_datasets,
    load_dataset,
)
from breakeven.data.mnli import WordPieceTokenizer
from helpers import write_cifar, write_fashion, write_idx

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- FashionMNIST (IDX)


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason="Debian dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("BREAKEVEN_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    ds = load_dataset("fashion_mnist")
    assert ds.source == str(DEBIAN_FASHION)
    assert ds.x_train.shape == (60_000, 1, 28, 28) and ds.x_test.shape == (10_000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32
    assert 0.0 == ds.x_train.min() and ds.x_train.max() == 1.0
    assert abs(float(ds.x_train.mean()) - 0.2860) < 1e-3  # the published pixel mean
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.probe()[0].shape[0] == 3000  # 5 % of the training set


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_files(isolated, gz) -> None:
    write_fashion(isolated / "fashion-mnist", gz=gz)
    ds = load_dataset("fashion_mnist", root=isolated)
    raw = bdata.read_idx(isolated / "fashion-mnist" / f"train-images-idx3-ubyte{'.gz' * gz}", 3)
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(raw.astype(np.float32) / 255))
    assert ds.y_test.tolist() == list(range(10))
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)


@pytest.mark.usefixtures("fashion_mnist")
def test_fashion_mnist_found_through_the_environment(isolated, monkeypatch) -> None:
    monkeypatch.setenv("BREAKEVEN_DATA", str(isolated))
    assert load_dataset("fashion_mnist").source == str(isolated / "fashion-mnist")


def test_missing_dataset_names_every_place_looked(isolated, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BREAKEVEN_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion_mnist", root=isolated)
    msg = str(e.value)
    for place in (isolated, tmp_path / "env", tmp_path / "xdg" / "breakeven", tmp_path / "system"):
        assert str(place / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("magic", "magic number 2049, expected 2051"),
        ("truncated", "body has"),
        ("shape", r"images \(40, 27, 27\)"),
        ("count", "do not match"),
        ("not_gzip", "cannot read"),
        ("empty", "no IDX header"),
    ],
)
@pytest.mark.usefixtures("fashion_mnist")
def test_corrupt_idx_files_give_a_clear_error(isolated, damage, message) -> None:
    folder = isolated / "fashion-mnist"
    images = folder / "train-images-idx3-ubyte.gz"
    a = np.zeros((40, 28, 28), np.uint8)
    if damage == "magic":
        write_idx(images, a, magic=2049)
    elif damage == "truncated":
        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[:-100]))
    elif damage == "shape":
        write_idx(images, np.zeros((40, 27, 27), np.uint8))
    elif damage == "count":
        write_idx(images, np.zeros((39, 28, 28), np.uint8))
    elif damage == "not_gzip":
        images.write_bytes(b"this is not gzip data at all")
    elif damage == "empty":
        images.write_bytes(gzip.compress(b"\x00\x00"))
    with pytest.raises(CorruptDatasetError, match=message):
        load_dataset("fashion_mnist", root=isolated)


# ---------------------------------------------------------------- subsets and probe


def small_dataset(n: int = 100) -> Dataset:
    x = torch.arange(n, dtype=torch.float32)[:, None]
    return Dataset("toy", x, torch.arange(n) % 3, x[:10], torch.arange(10) % 3, 3)


def test_n_train_subset_is_seeded() -> None:
    ds = small_dataset()
    a, b, c = ds.subset(30, seed=1), ds.subset(30, seed=1), ds.subset(30, seed=2)
    assert a.n_train == 30 and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert len(set(a.x_train[:, 0].tolist())) == 30  # without replacement
    assert torch.equal(a.x_test, ds.x_test)
    with pytest.raises(ValueError, match=r"n_train must be in \[1, 100\]"):
        ds.subset(101)


def test_probe_is_a_fixed_five_percent_of_train() -> None:
    ds = small_dataset()
    x, y = ds.probe()
    assert x.shape[0] == 5 and torch.equal(ds.probe()[0], x)
    assert torch.equal(ds.y_train[x[:, 0].long()], y)  # drawn from the training set
    from dataclasses import replace

    other = replace(ds, probe_seed=1)
    assert not torch.equal(other.probe()[0], x)
    assert replace(ds, probe_fraction=0.2).probe()[0].shape[0] == 20


@pytest.mark.usefixtures("fashion_mnist")
def test_load_dataset_subset_and_probe(isolated) -> None:
    ds = load_dataset("fashion_mnist", root=isolated, n_train=20, seed=4, probe_fraction=0.1)
    again = load_dataset("fashion_mnist", root=isolated, n_train=20, seed=4, probe_fraction=0.1)
    assert ds.n_train == 20 and torch.equal(ds.x_train, again.x_train)
    assert ds.probe()[0].shape[0] == 2


def test_dataset_validates_its_tensors() -> None:
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="labels outside"):
        Dataset("bad", x, torch.tensor([0, 1, 2, 5]), x, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="x_train has 4 examples, y_train 3"):
        Dataset("bad", x, torch.zeros(3, dtype=torch.long), x, torch.zeros(4, dtype=torch.long), 3)


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'.*'cifar10'"):
        load_dataset("svhn")
    assert {"fashion_mnist", "cifar10", "imdb", "mnli", "imagenet", "npz", "digits"} == set(
        list_datasets()
    )


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_python_batches(isolated, protocol) -> None:
    write_cifar(isolated / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset("cifar10", root=isolated)
    assert ds.x_train.shape == (40, 3, 32, 32) and ds.x_test.shape == (8, 3, 32, 32)
    with open(isolated / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    # row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32
    pixel = raw[b"data"][0, 1024 + 32 * 5 + 7] / 255.0
    mean, std = ds.meta["mean"][1], ds.meta["std"][1]
    assert float(ds.x_train[0, 1, 5, 7]) == pytest.approx((pixel - mean) / std, abs=1e-5)
    assert ds.y_train[:8].tolist() == raw[b"labels"]
    per_channel = ds.x_train.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.usefixtures("cifar10")
def test_cifar10_corrupt_files(isolated) -> None:
    folder = isolated / "cifar-10-batches-py"
    good = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptDatasetError, match="data_batch_2: not a readable pickle"):
        load_dataset("cifar10", root=isolated)
    bad = {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(bad))
    with pytest.raises(CorruptDatasetError, match=r"expected uint8 \(N, 3072\)"):
        load_dataset("cifar10", root=isolated)
    (folder / "data_batch_2").write_bytes(good)
    (folder / "test_batch").unlink()
    with pytest.raises(CorruptDatasetError, match="missing test_batch"):
        load_dataset("cifar10", root=isolated)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.usefixtures("cifar10")
def test_cifar10_refuses_arbitrary_pickled_code(isolated) -> None:
    folder = isolated / "cifar-10-batches-py"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(CorruptDatasetError, match="refusing to load"):
        load_dataset("cifar10", root=isolated)


def test_augmentation_is_seeded_crop_and_flip() -> None:
    x = torch.randn(16, 3, 8, 8)
    a = augment_crop_flip(x, torch.Generator().manual_seed(0))
    b = augment_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):  # each output is some crop of the padded image, maybe flipped
        crops = [padded[i, :, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        assert any(torch.equal(a[i], v) or torch.equal(a[i], v.flip(-1)) for v in crops)
    no_pad = augment_crop_flip(x, torch.Generator().manual_seed(1), padding=0)
    flipped = [not torch.equal(no_pad[i], x[i]) for i in range(16)]
    assert all(torch.equal(no_pad[i], x[i].flip(-1)) for i in range(16) if flipped[i])
    assert 0 < sum(flipped) < 16
    filled = augment_crop_flip(
        torch.zeros(64, 3, 4, 4), torch.Generator(), fill=torch.tensor([1.0, 2, 3])
    )
    assert set(filled[:, 2].unique().tolist()) <= {0.0, 3.0} and filled.max() == 3.0


# ---------------------------------------------------------------- IMDB


def write_acl(root: Path) -> None:
    reviews = {
        ("train", "pos"): ["A great great film.<br />Great!", "good fun"],
        ("train", "neg"): ["a bad film", "bad bad bad, awful"],
        ("test", "pos"): ["great film, unseen words"],
        ("test", "neg"): ["awful"],
    }
    for (split, label), texts in reviews.items():
        d = root / "aclImdb" / split / label
        d.mkdir(parents=True)
        for i, t in enumerate(texts):
            (d / f"{i}_7.txt").write_text(t)
    (root / "aclImdb" / "imdb.vocab").write_text("the\n")


def test_imdb_acl_folders(isolated) -> None:
    write_acl(isolated)
    ds = load_dataset("imdb", root=isolated, vocab_size=7, maxlen=6)
    # train counts: bad 4, great 3, a 2, film 2, awful 1, fun 1, good 1
    # ranks 1.. -> ids 4.. : bad 4, great 5, a 6; everything else out of vocabulary (2)
    assert ds.x_train.shape == (4, 6) and ds.x_train.dtype == torch.int64
    assert ds.y_train.tolist() == [0, 0, 1, 1]  # neg first, then pos
    assert ds.x_train[0].tolist() == [0, 0, 1, 6, 4, 2]  # "a bad film", left-padded
    assert ds.x_train[2].tolist() == [1, 6, 5, 5, 2, 5]  # <br /> dropped, lower-cased
    assert ds.x_test.tolist() == [[0, 0, 0, 0, 1, 2], [0, 1, 5, 2, 2, 2]]  # awful; great ...
    long = load_dataset("imdb", root=isolated, vocab_size=7, maxlen=3)
    assert long.x_train[2].tolist() == [5, 2, 5]  # the last tokens are kept
    assert int(ds.x_train.max()) < 7 and ds.meta["vocab_size"] == 7


def test_imdb_keras_npz(isolated) -> None:
    ragged = np.empty(3, dtype=object)
    ragged[:] = [[1, 2, 3], [19_996, 19_997, 5], list(range(1, 100))]
    np.savez(
        isolated / "imdb.npz",
        x_train=ragged,
        y_train=np.array([1, 0, 1]),
        x_test=ragged[:2],
        y_test=np.array([0, 1]),
    )
    ds = load_dataset("imdb", root=isolated)
    assert ds.x_train.shape == (3, 80) and ds.y_train.tolist() == [1, 0, 1]
    assert ds.x_train[0, -4:].tolist() == [1, 4, 5, 6] and ds.x_train[0, :-4].eq(0).all()
    assert ds.x_train[1, -4:].tolist() == [1, 19_999, 2, 8]  # 19,997 + 3 >= 20,000: OOV
    assert ds.x_train[2].tolist() == [r + 3 for r in range(20, 100)]


def test_imdb_npz_corrupt(isolated) -> None:
    np.savez(isolated / "imdb.npz", x_train=np.zeros(3), y_train=np.zeros(3))
    with pytest.raises(CorruptDatasetError, match="no array 'x_test'"):
        load_dataset("imdb", root=isolated)
    (isolated / "imdb.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CorruptDatasetError, match=r"not a readable \.npz"):
        load_dataset("imdb", root=isolated)


# ---------------------------------------------------------------- MNLI

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "un", "##aff", "##able", ".", "a"]


def write_mnli(root: Path) -> None:
    folder = root / "multinli_1.0"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    rows = [
        {"gold_label": "entailment", "sentence1": "The cat sat.", "sentence2": "a cat"},
        {"gold_label": "-", "sentence1": "no", "sentence2": "consensus"},
        {"gold_label": "contradiction", "sentence1": "unaffable dog", "sentence2": "the"},
    ]
    lines = "\n".join(json.dumps(r) for r in rows) + "\n"
    (folder / "multinli_1.0_train.jsonl").write_text(lines)
    (folder / "multinli_1.0_dev_matched.jsonl").write_text(json.dumps(rows[2]) + "\n")


def test_wordpiece_tokenizer(tmp_path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB))
    tok = WordPieceTokenizer(tmp_path / "vocab.txt", lowercase=True)
    assert tok.tokenize("Unaffable cat.") == ["un", "##aff", "##able", "cat", "."]
    assert tok.tokenize("dog") == ["[UNK]"]
    cased = WordPieceTokenizer(tmp_path / "vocab.txt", lowercase=False)
    assert cased.tokenize("The cat") == ["[UNK]", "cat"]


def test_mnli_jsonl(isolated) -> None:
    write_mnli(isolated)
    ds = load_dataset("mnli", root=isolated, maxlen=8, lowercase=True)
    assert ds.x_train.shape == (2, 3, 8) and ds.y_train.tolist() == [0, 2]  # "-" dropped
    ids, types, mask = ds.x_train[0].tolist()
    # [CLS] the cat sat . [SEP] a cat [SEP] cut longest-first to 8 tokens: drop "."
    assert ids == [2, 4, 5, 6, 3, 11, 5, 3]
    assert types == [0, 0, 0, 0, 0, 1, 1, 1] and mask == [1] * 8
    ids, types, mask = ds.x_train[1].tolist()
    assert ids == [2, 7, 8, 9, 1, 3, 4, 3] and mask == [1] * 8
    assert ds.num_classes == 3 and ds.meta["vocab_size"] == len(VOCAB)


def test_mnli_corrupt_and_missing(isolated) -> None:
    write_mnli(isolated)
    with open(isolated / "multinli_1.0" / "multinli_1.0_train.jsonl", "a") as f:
        f.write('{"gold_label": "entailment", "sentence1": "truncated\n')
    with pytest.raises(CorruptDatasetError, match="line 4"):
        load_dataset("mnli", root=isolated)
    (isolated / "multinli_1.0" / "vocab.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"vocab\.txt"):
        load_dataset("mnli", root=isolated)


# ---------------------------------------------------------------- ImageNet folders


def test_imagenet_class_folders(isolated) -> None:
    pil = pytest.importorskip("PIL.Image", reason="ImageNet loading needs Pillow")
    colours = {"n01440764": (255, 0, 0), "n01443537": (0, 0, 255)}
    for split, count in (("train", 3), ("val", 1)):
        for wnid, colour in colours.items():
            d = isolated / "imagenet" / split / wnid
            d.mkdir(parents=True)
            for i in range(count):
                pil.new("RGB", (48, 40), colour).save(d / f"{wnid}_{i}.JPEG", quality=95)
    ds = load_dataset("imagenet", root=isolated, image_size=32, resize=36, n_test=2)
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.meta["classes"] == tuple(colours) and ds.num_classes == 2
    red = ds.x_train[0, :, 16, 16] * torch.tensor(ds.meta["std"]) + torch.tensor(ds.meta["mean"])
    torch.testing.assert_close(red, torch.tensor([1.0, 0.0, 0.0]), atol=0.03, rtol=0)
    sub = load_dataset("imagenet", root=isolated, image_size=32, resize=36, n_train=4, seed=1)
    assert sub.n_train == 4
    (isolated / "imagenet" / "val" / "n01440764" / "broken.JPEG").write_bytes(b"\xff\xd8junk")
    with pytest.raises(CorruptDatasetError, match=r"broken\.JPEG: cannot decode"):
        load_dataset("imagenet", root=isolated, image_size=32, resize=36)


# ---------------------------------------------------------------- npz and digits


def test_generic_npz(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)  # NHWC as Keras stores it
    np.savez(
        tmp_path / "toy.npz",
        x_train=x,
        y_train=np.arange(10)[:, None] % 4,
        x_test=x[:4],
        y_test=np.arange(4),
    )
    ds = load_dataset("npz", root=tmp_path / "toy.npz")
    assert ds.x_train.shape == (10, 3, 6, 6) and ds.num_classes == 4
    assert float(ds.x_train[2, 1, 3, 4]) == pytest.approx(x[2, 3, 4, 1] / 255)
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.arange(9), x_test=x, y_test=np.arange(10))
    with pytest.raises(CorruptDatasetError, match="does not match y_train"):
        load_dataset("npz", root=tmp_path / "bad.npz")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("npz", root=tmp_path / "absent.npz")


def test_sklearn_digits() -> None:
    pytest.importorskip("sklearn", reason="digits need scikit-learn")
    ds = load_dataset("digits")
    assert ds.n_train + ds.x_test.shape[0] == 1797 and ds.input_shape == (1, 8, 8)
    assert float(ds.x_train.max()) == 1.0 and ds.num_classes == 10


def test_download_verifies_checksums_without_touching_the_network(isolated, monkeypatch) -> None:
    import io
    import urllib.error

    from breakeven.data import fashion_mnist as fm

    served: list[str] = []

    def fake_urlopen(url, timeout):
        served.append(url)
        return io.BytesIO(b"not the real file")

    monkeypatch.setattr(fm.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(CorruptDatasetError, match=r"downloaded MD5 .* expected 8d4fb7e6"):
        load_dataset("fashion_mnist", root=isolated, download=True)
    assert served == [fm.URL + "train-images-idx3-ubyte.gz"]
    folder = isolated.parent / "xdg" / "breakeven" / "fashion-mnist"
    assert list(folder.iterdir()) == []  # the bad download was not kept

    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(fm.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError, match=r"could not download .*no route to host"):
        load_dataset("fashion_mnist", root=isolated, download=True)
    assert list(folder.iterdir()) == []


def test_download_writes_each_verified_file_atomically(tmp_path, monkeypatch) -> None:
    """A verified download lands whole under its name (through records.atomic_write, which
    fsyncs the file and the folder), with no temporary file left; a file already there with
    the right MD5 is not downloaded again."""
    import hashlib
    import io
    import os

    from breakeven.data import fashion_mnist as fm

    files = {name: f"contents of {name}".encode() * 1000 for name in fm.MD5}
    monkeypatch.setattr(fm, "MD5", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})
    served: list[str] = []

    def fake_urlopen(url, timeout):
        served.append(url)
        return io.BytesIO(files[url.removeprefix(fm.URL)])

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(fm.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    folder = fm.download_fashion_mnist(tmp_path / "fm")
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert all((folder / n).read_bytes() == b for n, b in files.items())
    assert len(served) == len(files) and len(synced) >= 2 * len(files)  # file and folder
    fm.download_fashion_mnist(tmp_path / "fm")
    assert len(served) == len(files)
