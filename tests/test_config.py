"""Config: presets validate, overrides apply, and each bad value fails naming key, value and range."""

from __future__ import annotations

import pytest

from lddyn.config import PRESET_DIR, ConfigError, load_config, preset_names


def test_every_preset_loads() -> None:
    names = preset_names()
    assert {"digits-fixmatch", "digits-cdmad", "digits-dytrim", "reference"} <= set(names)
    for path in PRESET_DIR.rglob("*.yaml"):
        cfg = load_config(str(path))
        assert cfg.train.steps > 0


def test_overrides_reach_sections_and_methods() -> None:
    cfg = load_config(
        "digits-dytrim", ["train.steps=7", "methods.dytrim.keep_rate=0.5", "ssl.hard_label=true"]
    )
    assert cfg.train.steps == 7 and cfg.ssl.hard_label is True
    assert [m.name for m in cfg.methods] == ["cdmad", "dytrim"]
    assert cfg.methods[1].keep_rate == 0.5


def test_method_list_override() -> None:
    cfg = load_config("digits-fixmatch", ["methods=logit_adjust,reweight"])
    assert [m.name for m in cfg.methods] == ["logit_adjust", "reweight"]


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("data.imb_ratio=0.5", "data.imb_ratio", ">= 1"),
        ("data.num_max_u=-3", "data.num_max_u", ">= 0"),
        ("methods.dytrim.keep_rate=1.5", "methods.dytrim.keep_rate", "(0, 1]"),
        ("methods.dytrim.keep_rate=0", "methods.dytrim.keep_rate", "(0, 1]"),
        ("methods.dytrim.delta=0", "methods.dytrim.delta", "(0, 1]"),
        ("train.steps=0", "train.steps", ">= 1"),
        ("train.steps=abc", "train.steps", "integer"),
        ("methods=bogus", "methods[0].name", "cdmad"),
        ("data.dataset=mnist2", "data.dataset", "digits"),
        ("model.norm=group", "model.norm", "batch"),
        ("train.stepz=5", "train.stepz", "one of the keys"),
        ("ssl.tau=2", "ssl.tau", "[0, 1]"),
        ("ssl.hard_label=maybe", "ssl.hard_label", "true or false"),
    ],
)
def test_bad_values_name_key_value_and_range(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("digits-dytrim", [override])
    message = str(info.value)
    assert repr(key) in message and allowed in message
    assert override.split("=", 1)[1] in message


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="preset"):
        load_config("no-such-preset")


def test_round_trip_through_dict() -> None:
    from lddyn.config import build_config

    cfg = load_config("digits-dytrim", ["probe.colors=[0.0, -1.0]"])
    assert build_config(cfg.to_dict()) == cfg


def test_config_doc_is_in_sync() -> None:
    from lddyn.config_docs import config_markdown
    from tests.conftest import ROOT

    assert (ROOT / "docs" / "config.md").read_text() == config_markdown()


def test_config_doc_describes_keys_from_field_comments(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The description column is the field's comment: lines above, on its line, a multi-line field;
    a '#' inside a string is no comment; a field without a comment gets its section's docstring."""
    import importlib.util
    import sys

    from lddyn.config_docs import field_comments
    from tests.conftest import ROOT

    source = tmp_path / "sections.py"
    source.write_text(
        "from dataclasses import dataclass, field\n\n\n"
        "@dataclass\nclass Section:\n"
        '    """What the section holds.\n\n    More about it."""\n\n'
        "    # read above the field,\n    # over two lines\n    above: int = 1\n"
        "    trailing: str = '#not a comment'  # after the field\n"
        "    spread: tuple = field(\n        default=(1, 2),  # inside the field\n    )\n"
        "    bare: bool = True\n"
    )
    spec = importlib.util.spec_from_file_location("sections", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sections", module)
    spec.loader.exec_module(module)
    assert field_comments(module.Section) == {
        "above": "read above the field, over two lines",
        "trailing": "after the field",
        "spread": "inside the field",
        "bare": "What the section holds.",
    }
    doc = (ROOT / "docs" / "config.md").read_text()
    assert "| key | default | allowed | description |" in doc
    assert "| `data.num_max` | `40` | >= 1 | N1: labeled count of the head class |" in doc
    assert "| `train.device` | `'auto'` |" in doc and "cuda when one is visible" in doc
