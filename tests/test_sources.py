"""STL-10, MNIST and Small-ImageNet-127 sources: tiny files written here in each original format are
read back through build_data, and every bad file fails with a DataFileError naming it."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lddyn.config import load_config
from lddyn.data import DataFileError, build_data, longtail_counts
from lddyn.data.resize import resize_uint8
from lddyn.train.device import batch_images

RNG = np.random.default_rng(0)


# --- writers of the original formats ----------------------------------------------------------------


def write_stl10(root: Path, per_class: int = 6, unlabeled: int = 7, test_per_class: int = 2) -> Path:
    """stl10_binary/ with train, test and unlabeled files; images row-major in the returned arrays,
    stored column-major per channel like the official files."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(1, 11, dtype=np.uint8), n)  # 1-based, classes interleaved
        images = RNG.integers(0, 256, (len(labels), 3, 96, 96), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        np.save(root / f"{split}_images.npy", images)
    unl = RNG.integers(0, 256, (unlabeled, 3, 96, 96), dtype=np.uint8)
    (folder / "unlabeled_X.bin").write_bytes(unl.transpose(0, 1, 3, 2).tobytes())
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, per_class: int = 5, gz: bool = False, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", per_class), ("t10k", 2)):
        labels = np.tile(np.arange(10, dtype=np.uint8), n)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


def write_pickle(path: Path, data: np.ndarray, labels: list[int], train: bool = True) -> None:
    entry = {"data": data, "labels": labels}
    if train:
        entry["mean"] = data.mean(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(entry, fh)


def write_small_imagenet(folder: Path, side: int, train_labels: list[int], val_labels: list[int]) -> None:
    """The ten train batches (labels split over them in order) and val_data, labels as given (1-based)."""
    width = 3 * side * side
    for i, part in enumerate(np.array_split(np.asarray(train_labels), 10), start=1):
        data = RNG.integers(0, 256, (len(part), width), dtype=np.uint8)
        write_pickle(folder / f"train_data_batch_{i}", data, part.tolist())
    data = RNG.integers(0, 256, (len(val_labels), width), dtype=np.uint8)
    write_pickle(folder / "val_data", data, list(val_labels), train=False)


def write_cifar100(root: Path, per_class: int = 14) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", per_class), ("test", 1)):
        labels = np.tile(np.arange(100), n).tolist()
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": labels}, fh)


# --- STL-10 -------------------------------------------------------------------------------------------


def stl_config(root: Path, *extra: str):  # noqa: ANN201 - RunConfig
    return load_config("stl10-lt10-fixmatch", [f"data.root={root}", "data.num_max=4", *extra])


def test_stl10_column_major_files_read_row_major_in_file_order(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    data = build_data(stl_config(tmp_path, "data.image_size=null").data)
    train = np.load(tmp_path / "train_images.npy")
    assert data.image_shape == (3, 96, 96)
    assert data.class_counts("labeled").tolist() == longtail_counts(4, 10, 10)
    assert data.lb_index[:2].tolist() == [0, 10]  # class 0 is every 10th image: file order
    assert data.x_lb.dtype == torch.uint8 and torch.equal(data.x_lb[1], torch.from_numpy(train[10]))
    drawn = batch_images(data.x_lb, torch.tensor([1]), torch.device("cpu"))  # a batch: ToTensor
    assert drawn.dtype == torch.float32 and torch.equal(drawn[0], torch.from_numpy(train[10]).float() / 255)
    assert data.y_lb[:2].tolist() == [0, 0]  # stored 1-based
    assert data.x_test.shape == (20, 3, 96, 96) and data.y_test[:3].tolist() == [0, 1, 2]


def test_stl10_unlabeled_is_unlabeled_split_plus_labeled(tmp_path: Path) -> None:
    write_stl10(tmp_path, unlabeled=7)
    data = build_data(stl_config(tmp_path).data)  # the preset resizes to 32 px
    n_lb = sum(longtail_counts(4, 10, 10))
    assert data.image_shape == (3, 32, 32) and data.x_test.shape[-1] == 32
    assert len(data.y_ulb) == 7 + n_lb and (data.y_ulb[:7] == -1).all()
    assert torch.equal(data.y_ulb[7:], data.y_lb) and torch.equal(data.x_ulb[7:], data.x_lb)
    assert data.ulb_index.tolist() == list(range(7)) + (7 + data.lb_index).tolist()


@pytest.mark.parametrize(("size", "exact"), [(32, True), (64, True), (40, False)])
def test_resize_matches_pil_bilinear(size: int, exact: bool) -> None:
    from PIL import Image

    images = RNG.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    ours = resize_uint8(images, size)
    for img, small in zip(images, ours, strict=True):
        pil = Image.fromarray(img.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)
        diff = np.abs(np.asarray(pil).transpose(2, 0, 1).astype(int) - small.astype(int))
        assert diff.max() == 0 if exact else (diff.max() <= 1 and (diff == 0).mean() > 0.98)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "train_y.bin").unlink(), r"train_y\.bin is missing"),
        (
            lambda f: (f / "test_X.bin").write_bytes(b"\0" * 1000),
            r"test_X\.bin: 1000 bytes .* multiple of 27648",
        ),
        (lambda f: (f / "train_y.bin").write_bytes(b"\1" * 3), r"train_y\.bin: expected 60 labels"),
        (lambda f: (f / "test_y.bin").write_bytes(b"\0" * 20), r"test_y\.bin: labels 0\.\.0 outside 1\.\.10"),
        (lambda f: (f / "unlabeled_X.bin").unlink(), r"unlabeled_X\.bin is missing"),
    ],
)
def test_stl10_bad_files_are_named(tmp_path: Path, damage, message: str) -> None:  # noqa: ANN001
    damage(write_stl10(tmp_path))
    with pytest.raises(DataFileError, match=message):
        build_data(stl_config(tmp_path).data)


def test_stl10_without_root_or_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="data.root is not set"):
        build_data(load_config("stl10-lt10-fixmatch").data)
    with pytest.raises(DataFileError, match="stl10_binary does not exist"):
        build_data(stl_config(tmp_path).data)


# --- MNIST --------------------------------------------------------------------------------------------


def mnist_config(root: Path):  # noqa: ANN201 - RunConfig
    sets = [
        f"data.root={root}",
        "data.dataset=mnist",
        "data.num_max=3",
        "data.num_max_u=2",
        "data.imb_ratio=3",
    ]
    return load_config("digits-fixmatch", [*sets, "data.imb_ratio_u=2", "data.shuffle_within_class=false"])


def test_mnist_plain_and_gzipped_read_the_same(tmp_path: Path) -> None:
    write_mnist(tmp_path / "plain")
    write_mnist(tmp_path / "gz" / "MNIST" / "raw", gz=True)  # torchvision's layout
    plain = build_data(mnist_config(tmp_path / "plain").data)
    gz = build_data(mnist_config(tmp_path / "gz").data)
    assert torch.equal(gz.x_lb, plain.x_lb) and torch.equal(gz.x_test, plain.x_test)
    assert torch.equal(gz.y_ulb, plain.y_ulb)
    assert plain.image_shape == (1, 28, 28) and plain.mean == (0.1307,)
    assert plain.class_counts("labeled").tolist() == longtail_counts(3, 3, 10)
    assert plain.lb_index[:3].tolist() == [0, 10, 20] and len(plain.y_test) == 20


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "t10k-labels-idx1-ubyte").unlink(), r"t10k-labels-idx1-ubyte is missing; looked for"),
        (
            lambda r: (r / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\0" * 8),
            r"train-images-idx3-ubyte: expected an IDX uint8 file with 3 dimensions",
        ),
        (
            lambda r: (r / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((20, 28, 28)))[:-5]),
            r"t10k-images-idx3-ubyte: header says shape \(20, 28, 28\) = 15680 bytes, the file holds 15675",
        ),
        (
            lambda r: (r / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((20, 32, 32)))),
            r"t10k-images-idx3-ubyte: expected images of 28 x 28",
        ),
        (
            lambda r: (r / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7))),
            r"t10k-labels-idx1-ubyte: expected 20 labels",
        ),
        (
            lambda r: (r / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(20, 10))),
            r"t10k-labels-idx1-ubyte: labels 10\.\.10 outside 0\.\.9",
        ),
    ],
)
def test_mnist_bad_files_are_named(tmp_path: Path, damage, message: str) -> None:  # noqa: ANN001
    damage(write_mnist(tmp_path))
    with pytest.raises(DataFileError, match=message):
        build_data(mnist_config(tmp_path).data)


def test_mnist_corrupt_gzip_is_named(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    blob = (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte\.gz is not a readable gzip file"):
        build_data(mnist_config(tmp_path).data)


# --- Small-ImageNet-127 -------------------------------------------------------------------------------

# train images per original class (0-based, 127 classes): labeled = round(10 %), half to even
SIZES = {0: 4, 3: 25, 5: 31, 9: 15, 126: 12}  # labeled 0, 2, 3, 2, 1
EXPECTED_ORDER = [5, 3, 9, 126, 0]  # by labeled size, ties (3, 9) in original order


def small_imagenet_labels() -> tuple[list[int], list[int]]:
    train = [k for k, n in SIZES.items() for _ in range(n)]
    train = [train[i] for i in np.random.default_rng(1).permutation(len(train))]  # classes interleaved
    return [k + 1 for k in train], [k + 1 for k in (0, 3, 5, 9, 126, 5)]


def sin_config(root: Path, side: int = 32):  # noqa: ANN201 - RunConfig
    return load_config(f"smallimagenet127-{side}-fixmatch", [f"data.root={root}"])


@pytest.mark.parametrize("side", [32, 64])
def test_small_imagenet_prepared_pickles(tmp_path: Path, side: int) -> None:
    train, val = small_imagenet_labels()
    write_small_imagenet(tmp_path / f"imagenet{side}_127", side, train, val)
    data = build_data(sin_config(tmp_path, side).data)
    old = np.asarray(train) - 1
    assert data.image_shape == (3, side, side) and data.num_classes == 127
    first_of = {k: np.flatnonzero(old == k)[: int(np.around(n * 0.1))] for k, n in SIZES.items()}
    assert data.lb_index.tolist() == np.concatenate([first_of[k] for k in sorted(SIZES)]).tolist()
    new = {k: EXPECTED_ORDER.index(k) for k in SIZES}
    assert data.class_counts("labeled")[:5].tolist() == [3, 2, 2, 1, 0]
    assert data.y_lb.tolist() == [new[k] for k in old[data.lb_index.numpy()]]
    assert len(data.y_ulb) == len(train) and data.y_ulb.tolist() == [new[k] for k in old]
    assert data.y_test.tolist() == [new[k - 1] for k in val]
    assert data.class_counts("unlabeled")[:5].tolist() == [31, 25, 15, 12, 4]


def write_class_map(root: Path) -> None:
    """Four ImageNet classes mapped onto super-classes 126, 3, 3 and 0 of a 127-line synset file."""
    supers = [f"s{k:03d}" for k in range(127)]
    (root / "synset_words_up_down_127.txt").write_text("".join(f"{s} name {s}\n" for s in supers))
    wnids = ["n0001", "n0002", "n0003", "n0004"]
    (root / "map_clsloc.txt").write_text("".join(f"{w} {i + 1} thing_{i}\n" for i, w in enumerate(wnids)))
    folders = {"n0001": "s126", "n0002": "s003", "n0003": "s003", "n0004": "s000"}
    lines = [f"{w}_{j}.JPEG {folders[w]}\n" for w in wnids for j in (7, 8)]
    (root / "imgname2folder.txt").write_text("".join(lines))


def test_small_imagenet_original_pickles_with_class_map(tmp_path: Path) -> None:
    write_class_map(tmp_path)
    old = [1] * 10 + [2] * 20 + [3] * 20 + [4] * 30  # ImageNet classes, 1-based
    train = [old[i] for i in np.random.default_rng(2).permutation(len(old))]
    write_small_imagenet(tmp_path / "Imagenet32_train", 32, train, [4, 1, 2, 3])
    (tmp_path / "Imagenet32_val").mkdir()
    (tmp_path / "Imagenet32_train" / "val_data").rename(tmp_path / "Imagenet32_val" / "val_data")
    data = build_data(sin_config(tmp_path).data)
    # super-class 3 holds 40 images (4 labeled), 0 holds 30 (3), 126 holds 10 (1)
    assert data.class_counts("labeled")[:3].tolist() == [4, 3, 1]
    assert data.y_test.tolist() == [1, 2, 0, 0]


def test_small_imagenet_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="found neither .*imagenet32_127.* nor the 127-class mapping"):
        build_data(sin_config(tmp_path).data)
    folder = tmp_path / "imagenet32_127"
    train, val = small_imagenet_labels()
    write_small_imagenet(folder, 32, train, val)
    write_pickle(folder / "val_data", np.zeros((3, 100), np.uint8), [1, 2, 3], train=False)
    with pytest.raises(DataFileError, match=r"val_data: expected data \(N, 3072\) for 32 x 32 images"):
        build_data(sin_config(tmp_path).data)
    write_pickle(folder / "val_data", np.zeros((2, 3072), np.uint8), [0, 5], train=False)
    with pytest.raises(
        DataFileError, match=r"val_data: labels 0\.\.5 outside 1\.\.127 \(labels are stored 1-based\)"
    ):
        build_data(sin_config(tmp_path).data)
    (folder / "train_data_batch_7").unlink()
    with pytest.raises(DataFileError, match="train_data_batch_7 is missing"):
        build_data(sin_config(tmp_path).data)
    (folder / "train_data_batch_4").write_bytes(b"\x80\x04truncated")
    with pytest.raises(
        DataFileError, match="train_data_batch_4 is not a readable down-sampled ImageNet pickle"
    ):
        build_data(sin_config(tmp_path).data)


def test_small_imagenet_class_map_errors(tmp_path: Path) -> None:
    write_class_map(tmp_path)
    (tmp_path / "imgname2folder.txt").write_text("n0001_1.JPEG s126\n")
    with pytest.raises(DataFileError, match="imgname2folder.txt lists no image of class n0002"):
        build_data(sin_config(tmp_path).data)
    write_class_map(tmp_path)
    (tmp_path / "synset_words_up_down_127.txt").write_text("s000 a\n")
    with pytest.raises(DataFileError, match="synset_words_up_down_127.txt has no line for super-class s126"):
        build_data(sin_config(tmp_path).data)
    write_class_map(tmp_path)
    with (tmp_path / "synset_words_up_down_127.txt").open("a") as fh:
        fh.write("s127 one too many\n")
    with pytest.raises(DataFileError, match="expected 127 super-classes"):
        build_data(sin_config(tmp_path).data)
    write_class_map(tmp_path)
    (tmp_path / "map_clsloc.txt").write_text("n0001 1 a\nn0004 4 d\n")
    with pytest.raises(DataFileError, match="map_clsloc.txt has no line for ImageNet class index 2"):
        build_data(sin_config(tmp_path).data)
    write_class_map(tmp_path)
    with pytest.raises(DataFileError, match="train_data_batch_1 is missing; looked for"):
        build_data(sin_config(tmp_path).data)


def test_small_imagenet_only_32_or_64() -> None:
    from lddyn.config import ConfigError

    with pytest.raises(ConfigError, match="data.image_size"):
        load_config("smallimagenet127-32-fixmatch", ["data.image_size=48"])


def test_cli_data_root_reaches_the_source(tmp_path: Path) -> None:
    from tests.conftest import cli

    args = ["run", "-p", "stl10-lt10-fixmatch", "--data-root", str(tmp_path), "-q", "--no-plot"]
    proc = cli(*args, check=False)
    assert proc.returncode == 2
    assert f"{tmp_path / 'stl10_binary'} does not exist" in proc.stderr.replace("\n", "")


# --- CIFAR-100: the reference's within-class shuffle ---------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_cifar100_legacy_shuffle_matches_the_reference_draw(tmp_path: Path, seed: int) -> None:
    write_cifar100(tmp_path)
    sets = [f"data.root={tmp_path}", "data.num_max=5", "data.num_max_u=4", f"data.data_seed={seed}"]
    cfg = load_config("cifar100-lt50-fixmatch", sets)
    data = build_data(cfg.data)
    labels = np.tile(np.arange(100), 14)
    np.random.seed(seed)  # the reference's train_split, step by step
    expected = []
    for k in range(100):
        idx = np.where(labels == k)[0]
        if seed != 0:
            np.random.shuffle(idx)
        expected.extend(idx[: longtail_counts(5, 50, 100)[k]])
    assert data.lb_index.tolist() == [int(i) for i in expected]
    assert (data.lb_index[:2].tolist() == [0, 100]) == (seed == 0)


def test_every_registered_dataset_is_a_config_choice() -> None:
    from lddyn.config import ConfigError
    from lddyn.data import DATASETS

    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "stl10", "smallimagenet127", "mnist"}
    for name in DATASETS:
        assert load_config("digits-fixmatch", [f"data.dataset={name}"]).data.dataset == name
    with pytest.raises(ConfigError, match="data.dataset"):
        load_config("digits-fixmatch", ["data.dataset=svhn"])


def test_tiny_stl10_trains_with_unknown_unlabeled_labels(tmp_path: Path) -> None:
    """y_ulb = -1 for the 100k-style unlabeled images must pass through training, DyTrim and the recorder."""
    from lddyn.analysis.load import load_table
    from lddyn.train.run import start_run

    write_stl10(tmp_path / "data", per_class=6, unlabeled=24)
    sets = [f"data.root={tmp_path / 'data'}", "data.num_max=6", "model.name=cnn", "model.width=8"]
    sets += ["ssl.batch_size=4", "train.steps=3", "train.eval_every=3", "train.threads=1"]
    sets += ["methods.cdmad.start_step=1", "methods.dytrim.prior_start_step=1"]
    sets += ["record.dynamics=true", "record.every=1", "record.tracked=2", "probe.baseline=true"]
    run_dir = start_run(load_config("stl10-lt10-dytrim", sets), tmp_path / "run", progress=False)
    metrics = load_table(run_dir, "metrics")
    assert len(metrics) > 0 and len(load_table(run_dir, "dynamics")) > 0
