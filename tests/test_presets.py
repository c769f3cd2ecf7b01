"""Every preset under experiments/ (recursively) validates, matches the published settings
(docs/recipe.md), and builds its data from tiny files in the original format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lddyn.config import PRESET_DIR, load_config, preset_names
from lddyn.data import build_data, longtail_counts, split_counts
from tests.test_cifar_source import write_cifar10
from tests.test_sources import write_cifar100, write_small_imagenet, write_stl10

PATHS = sorted(PRESET_DIR.rglob("*.yaml"))
FILE_BACKED = [p for p in PATHS if load_config(str(p)).data.dataset != "digits"]
METHOD_SETS = {"fixmatch": [], "cdmad": ["cdmad"], "dytrim": ["cdmad", "dytrim"]}


def test_names_are_unique_and_listed() -> None:
    assert not [name for name, n in Counter(p.stem for p in PATHS).items() if n > 1]
    names = set(preset_names())
    for folder in ("cifar10", "cifar100", "stl10", "smallimagenet"):
        assert any(p.parent.name == folder for p in PATHS) and {p.stem for p in PATHS} <= names
    assert "fixmatch-classic" in names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_preset_validates(path: Path) -> None:
    cfg = load_config(str(path))
    assert cfg.preset == path.stem and cfg.train.steps > 0
    if cfg.data.dataset != "digits":
        assert cfg.data.root is None  # the user points data.root at their files
        assert cfg.model.name == ("resnet50" if cfg.data.dataset == "smallimagenet127" else "wrn28_2")


# |L| and |U| (U includes L) of the split table in docs/recipe.md
TOTALS = {
    "cifar10-lt50": (4196, 12593),
    "cifar10-lt100": (3720, 11163),
    "cifar10-lt150": (3496, 10492),
    "cifar10-lt100-u1": (3720, 33720),
    "cifar10-lt100-rev": (3720, 11163),
    "cifar100-lt50": (3751, 11297),
    "cifar100-lt100": (3218, 9704),
}


@pytest.mark.parametrize("setting", sorted(TOTALS))
@pytest.mark.parametrize("method", sorted(METHOD_SETS))
def test_settings_match_the_reference_table(setting: str, method: str) -> None:
    cfg = load_config(f"{setting}-{method}")
    k = 100 if setting.startswith("cifar100") else 10
    n_lb, n_extra = split_counts(cfg.data, k)
    assert (sum(n_lb), sum(n_lb) + sum(n_extra)) == TOTALS[setting]
    assert [m.name for m in cfg.methods] == METHOD_SETS[method]
    if setting.endswith("-rev"):
        assert n_extra[0] < n_extra[-1] == 3000


@pytest.mark.parametrize(("gamma", "labeled"), [(10, 1835), (20, 1528)])
def test_stl10_labeled_totals(gamma: int, labeled: int) -> None:
    cfg = load_config(f"stl10-lt{gamma}-dytrim")
    assert sum(longtail_counts(cfg.data.num_max, cfg.data.imb_ratio, 10)) == labeled
    assert cfg.data.image_size == 32 and cfg.optim.ema_weight_decay == 0.01


def test_methods_are_the_only_difference_within_a_setting() -> None:
    """Each setting with a -fixmatch preset has -cdmad and -dytrim twins that train alike and differ
    only in methods (what is recorded, ``record``, is not training: the digits default records)."""
    stems = {p.stem: p for p in PATHS}
    settings = [stem.removesuffix("-fixmatch") for stem in stems if stem.endswith("-fixmatch")]
    assert len(settings) >= 13
    for setting in settings:
        variants = {}
        for method in METHOD_SETS:
            raw = load_config(str(stems[f"{setting}-{method}"])).to_dict()
            raw.pop("preset"), raw.pop("methods"), raw.pop("record")
            variants[method] = raw
        assert variants["fixmatch"] == variants["cdmad"] == variants["dytrim"], setting


def test_fixmatch_classic_is_the_usual_recipe() -> None:
    cfg = load_config("fixmatch-classic")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.nesterov, cfg.optim.schedule) == (
        "sgd",
        0.03,
        True,
        "cosine",
    )
    assert (cfg.ssl.batch_size, cfg.ssl.uratio, cfg.ssl.tau, cfg.ssl.hard_label) == (64, 7, 0.95, True)
    assert cfg.methods == ()


# --- building the data of every file-backed preset from tiny original files ---------------------------


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny root per data set, written once for all presets."""
    out = {
        name: tmp_path_factory.mktemp(name) for name in ("cifar10", "cifar100", "stl10", "smallimagenet127")
    }
    write_cifar10(out["cifar10"], per_class=12)  # 30 images per class
    write_cifar100(out["cifar100"])
    write_stl10(out["stl10"], per_class=6, unlabeled=9)
    labels = [1] * 30 + [2] * 20 + list(range(3, 128))  # 1-based; 3 and 2 labeled, the rest round to 0
    for side in (32, 64):
        write_small_imagenet(out["smallimagenet127"] / f"imagenet{side}_127", side, labels, [1, 2, 127])
    return out


SHRINK = ["data.num_max=6", "data.num_max_u=8"]


@pytest.mark.parametrize("path", FILE_BACKED, ids=lambda p: p.stem)
def test_preset_builds_from_tiny_original_files(path: Path, roots: dict[str, Path]) -> None:
    base = load_config(str(path))
    dataset = base.data.dataset
    shrink = [] if dataset == "smallimagenet127" else SHRINK
    cfg = load_config(str(path), [f"data.root={roots[dataset]}", *shrink])
    data = build_data(cfg.data)
    side = cfg.data.image_size or 32
    assert data.image_shape == (3, side, side) and data.x_test.shape[1:] == (3, side, side)
    if dataset == "smallimagenet127":
        assert data.num_classes == 127 and len(data.y_ulb) == 30 + 20 + 125
        assert data.class_counts("labeled").tolist() == [3, 2] + [0] * 125
        return
    n_lb, n_extra = split_counts(cfg.data, data.num_classes)
    assert data.class_counts("labeled").tolist() == n_lb
    if dataset == "stl10":
        assert len(data.y_ulb) == 9 + sum(n_lb)
    else:
        assert data.class_counts("unlabeled").tolist() == [a + b for a, b in zip(n_lb, n_extra, strict=True)]
