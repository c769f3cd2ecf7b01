"""Typed run configuration: frozen dataclasses, YAML presets, dotted ``key.sub=value`` overrides.

Every field carries its allowed range in its metadata, so a bad value fails before training with
one message naming the key, the value and what is allowed. Method sections are validated by the
method's own ``Config`` dataclass (see ``lddyn.methods``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lddyn.config_fields import (  # noqa: F401  (re-exported: the sections of methods use them)
    Check,
    ConfigError,
    _f,
    at_least,
    non_negative,
    one_of,
    positive,
    unit_closed,
    unit_open_closed,
)
from lddyn.suggest import hint

PRESET_DIR = Path(__file__).resolve().parents[1] / "experiments"


# --- sections ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    # the data source (docs/data.md)
    dataset: str = one_of("digits", "digits", "cifar10", "cifar100", "stl10", "smallimagenet127", "mnist")
    root: str | None = None  # folder holding the original files (docs/data.md); never downloaded
    # side of the images the model sees; None = the files' own (STL-10 96, MNIST 28, CIFAR 32);
    # other sizes are resized at load, except smallimagenet127, where 32 | 64 picks the pickles
    image_size: int | None = _f(None, lambda v: v >= 8, ">= 8 or null")
    labeled_fraction: float = unit_open_closed(0.1)  # smallimagenet127: labeled share of each class
    num_max: int = at_least(40, 1)  # N1: labeled count of the head class
    num_max_u: int = non_negative(80)  # M1: extra unlabeled count of the head class
    imb_ratio: float = at_least(20.0, 1.0)  # gamma_l
    imb_ratio_u: float = at_least(20.0, 1.0)  # gamma_u
    reverse_unlabeled: bool = False  # reverse the per-class extra unlabeled counts (tail-heavy U)
    test_per_class: int = at_least(50, 1)  # digits and MNIST: test images held out per class
    shuffle_within_class: bool = True  # False = file order, as the reference does for CIFAR-10/STL-10
    # with shuffle_within_class: draw as the reference's CIFAR-100 code (np.random.seed(data_seed),
    # np.random.shuffle per class; seed 0 = file order), so its splits are matched index for index
    legacy_shuffle: bool = False
    data_seed: int = 0  # seed of the split (which samples are labeled, unlabeled, test)
    flip: bool = False  # horizontal flips (off for digits, whose classes are not mirror-symmetric)
    ra_n: int = non_negative(3)  # RandAugment operations per strong view
    ra_m: float = _f(4.0, lambda v: 0 <= v <= 30, "in [0, 30]")  # RandAugment magnitude (0..30 scale)


@dataclass(frozen=True)
class ModelConfig:
    name: str = one_of("cnn", "cnn", "mlp", "wrn28_2", "resnet50")  # architecture (lddyn/models)
    width: int = at_least(32, 1)  # cnn and mlp: channels / hidden units (WRN and ResNet: fixed)
    norm: str = one_of("batch", "batch", "layer", "none")  # cnn and mlp: normalisation layers
    bn_momentum: float = unit_closed(0.1)  # BatchNorm running statistics: the new batch's weight
    bn_eps: float = positive(1e-5)  # BatchNorm epsilon added to the variance


@dataclass(frozen=True)
class SSLConfig:
    batch_size: int = at_least(32, 1)  # labeled B
    uratio: int = at_least(2, 0)  # mu: unlabeled batch = mu * B
    num_strong: int = at_least(2, 1)  # strong views per unlabeled image
    tau: float = unit_closed(0.0)  # confidence threshold of the pseudo-label mask
    hard_label: bool = False  # one-hot pseudo-targets instead of soft ones
    temperature: float = positive(1.0)  # softmax temperature of the weak-view pseudo-targets
    lambda_u: float = non_negative(1.0)  # weight of the consistency term
    pseudo_label_mode: str = one_of("train", "train", "eval")  # model mode of the weak-view forward
    separate_bn_batches: bool = True  # forward labeled and each strong view as separate BN batches
    baseline_value: float = 0.0  # colour k of the baseline image, in normalised space
    log_eps: float = _f(0.0, lambda v: 0 <= v < 1, "in [0, 1)")  # CE on log(softmax + eps); released 1e-8
    # every N batches a stream restarts its pass over the current pool (released: 500); 0 = never
    loader_restart: int = non_negative(0)
    loader_lookahead: int = non_negative(0)  # next pool drawn N batches before a pass ends (released: 8)


@dataclass(frozen=True)
class OptimConfig:
    name: str = one_of("adam", "adam", "sgd")  # optimiser
    lr: float = positive(0.0015)  # learning rate (the start of the schedule)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    momentum: float = unit_closed(0.9)  # SGD momentum
    nesterov: bool = True  # SGD: Nesterov momentum
    weight_decay: float = non_negative(0.0)  # coupled decay inside the optimiser
    ema_weight_decay: float = non_negative(0.04)  # decoupled: state *= 1 - wd * lr after each step
    schedule: str = one_of("constant", "constant", "cosine")  # cosine: FixMatch's lr * cos(7 pi k / (16 K))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = at_least(1500, 1)  # training steps K (one labeled + unlabeled batch each)
    seed: int = 0  # seed of the initial weights, batches and augmentations
    ema: float = unit_closed(0.999)  # decay of the weights' moving average, the evaluated model
    eval_every: int = at_least(100, 1)  # evaluate on the test split every N steps
    checkpoint_every: int = at_least(250, 1)  # write checkpoint.pt every N steps
    log_every: int = at_least(10, 1)  # rows of the train table every N steps
    device: str = "auto"  # auto (cuda when one is visible, else cpu) | cpu | cuda | cuda:N
    threads: int = non_negative(0)  # 0 = torch's default
    precision: str = one_of("fp32", "fp32", "bf16")  # bf16 = autocast of the training forwards
    channels_last: bool = False  # NHWC weights and activations (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the student's forward
    deterministic: bool = False  # deterministic kernels only (torch.use_deterministic_algorithms)
    data_placement: str = one_of("auto", "auto", "device", "host")  # training images on the device?
    dtype: str = one_of("float32", "float32", "float64")  # model, data batches and optimiser state
    # EMA's integer buffers (num_batches_tracked): copied from the student, or frozen at 0 (released)
    ema_counts: str = one_of("copy", "copy", "frozen")


@dataclass(frozen=True)
class DistributedConfig:
    """Multi-process single runs under ``torchrun``; ignored in a single process."""

    batch_scope: str = one_of("global", "global", "per_device")  # what ssl.batch_size counts
    sync_bn: bool = True  # BatchNorm statistics over the global batch (equal to one process)
    backend: str = one_of("auto", "auto", "gloo", "nccl")  # auto = nccl on cuda, gloo on cpu


@dataclass(frozen=True)
class ProbeConfig:
    baseline: bool = False  # probe pi(I) of the baseline images (= --probe baseline)
    every: int = at_least(25, 1)  # probe every N steps
    colors: tuple[float, ...] = (0.0, 1.0)  # baseline colours k, in normalised space


GROUPINGS = ("term", "source_class", "correct", "status")


@dataclass(frozen=True)
class RecordConfig:
    """The dynamics recorder (``--record dynamics``): when, at which observations, split how."""

    dynamics: bool = False  # record the first-order dynamics of training steps (docs/dynamics.md)
    every: int = at_least(10, 1)  # record every N steps ...
    dense_until: int = non_negative(0)  # ... and at every step up to this one
    obs_per_class: int = non_negative(1)  # test images per class observed (running statistics)
    baseline: bool = True  # observe the baseline image(s) of probe.colors
    # how the baseline images are observed: own = each normalised by its own statistics, as CDMAD,
    # DyTrim and the probe forward them; running = BatchNorm's running statistics
    baseline_norm: str = one_of("own", "own", "running")
    # training samples tracked per set (labeled, unlabeled), spread over classes (running statistics)
    tracked: int = non_negative(0)
    # grouping keys: loss term, source class, pseudo-label correctness, pruning status
    by: tuple[str, ...] = _f(
        GROUPINGS, lambda v: set(v) <= set(GROUPINGS) and len(v) > 0, f"a non-empty subset of {GROUPINGS}"
    )
    # group gradients: decoupled = batch statistics held at the batch's values, ~one backward for all
    # groups, the rest reported as term bn_coupling; exact = one backward per group, coupling included
    groups: str = one_of("decoupled", "decoupled", "exact")


#: Keys of earlier versions, dropped when an old run.json is read (their behaviour is now fixed).
RETIRED = {"record": ("realised", "per_sample_every")}


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's typed config; ``name`` selects the plug-in."""

    name: str = ""


@dataclass(frozen=True)
class RunConfig:
    preset: str = "digits-dytrim"  # name of the preset the run started from (its file name)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    ssl: SSLConfig = SSLConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    record: RecordConfig = RecordConfig()
    distributed: DistributedConfig = DistributedConfig()
    methods: tuple[MethodConfig, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# --- building and validation ------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"a list of {type_name(args[0])}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(key, value, f"a list of {len(args)} values")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(key, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(key, value, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(key, value, "an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(key, value, "a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, value, "a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(key, value, "a string")
        return str(value)
    return value


def build_section(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Build a frozen dataclass from a mapping, checking keys, types and ranges."""
    if not isinstance(values, Mapping):
        raise ConfigError(prefix.rstrip("."), values, "a mapping of keys to values")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        allowed = f"one of the keys {sorted(fields)}{hint(unknown[0], fields)}"
        raise ConfigError(f"{prefix}{unknown[0]}", values[unknown[0]], allowed)
    kwargs = {}
    for name, raw in values.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_section(tp, raw, f"{key}.")
            continue
        value = _coerce(key, raw, tp)
        check = fields[name].metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise ConfigError(key, raw, fields[name].metadata["allowed"])
        kwargs[name] = value
    return cls(**kwargs)


def build_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping (a loaded preset with overrides applied) into a RunConfig."""
    from lddyn.methods import build_method_configs  # methods register their own config classes

    raw = dict(raw)
    for section, keys in RETIRED.items():
        if isinstance(raw.get(section), Mapping):
            raw[section] = {k: v for k, v in raw[section].items() if k not in keys}
    methods = build_method_configs(raw.pop("methods", []) or [])
    cfg = build_section(RunConfig, raw, "")
    cfg = dataclasses.replace(cfg, methods=methods)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: RunConfig) -> None:
    if cfg.train.device not in ("cpu", "auto") and not cfg.train.device.startswith("cuda"):
        raise ConfigError("train.device", cfg.train.device, "cpu | cuda | cuda:N | auto")
    if cfg.train.dtype == "float64" and cfg.train.precision != "fp32":
        raise ConfigError("train.precision", cfg.train.precision, "fp32 when train.dtype is float64")
    if cfg.data.dataset == "smallimagenet127" and cfg.data.image_size not in (None, 32, 64):
        raise ConfigError("data.image_size", cfg.data.image_size, "32 | 64 for smallimagenet127")


# --- presets and overrides --------------------------------------------------------------------------


def preset_names(directory: Path = PRESET_DIR) -> list[str]:
    return sorted(p.stem for p in directory.rglob("*.yaml"))


def preset_path(name_or_path: str, directory: Path = PRESET_DIR) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    if path.suffix in (".yaml", ".yml"):
        raise ConfigError("preset", name_or_path, "a preset name or an existing YAML file (no such file)")
    matches = sorted(directory.rglob(f"{name_or_path}.yaml"))
    if not matches:
        names = preset_names(directory)
        listed = f"{hint(name_or_path, names)} (`lddyn ls` lists all {len(names)})"
        raise ConfigError("preset", name_or_path, f"a preset name or a YAML file path{listed}")
    return matches[0]


def load_preset(name_or_path: str) -> dict[str, Any]:
    path = preset_path(name_or_path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError("preset", str(path), "a YAML mapping at the top level")
    raw.setdefault("preset", path.stem)
    return raw


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place. Methods are addressed by name: ``methods.cdmad.x``.

    ``methods=cdmad,dytrim`` replaces the method list with those methods at their defaults.
    """
    if "=" not in assignment:
        raise ConfigError("--set", assignment, "key.sub=value")
    key, text = assignment.split("=", 1)
    value = yaml.safe_load(text) if text else ""
    parts = key.strip().split(".")
    if parts[0] == "methods":
        _override_method(raw, parts[1:], value, key)
        return
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(key, value, f"{part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _override_method(raw: dict[str, Any], parts: list[str], value: Any, key: str) -> None:
    if not parts:
        names = value.split(",") if isinstance(value, str) else list(value or [])
        raw["methods"] = [{"name": n.strip()} for n in names if str(n).strip()]
        return
    methods = raw.setdefault("methods", [])
    entry = next((m for m in methods if m.get("name") == parts[0]), None)
    if entry is None:
        present = [m.get("name") for m in methods]
        raise ConfigError(
            key, value, f"a method in the run's list {present}{hint(parts[0], map(str, present))}"
        )
    if len(parts) != 2:
        raise ConfigError(key, value, "methods.NAME.key=value")
    entry[parts[1]] = value


def load_config(preset: str = "digits-dytrim", overrides: list[str] | None = None) -> RunConfig:
    raw = load_preset(preset)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return build_config(raw)
