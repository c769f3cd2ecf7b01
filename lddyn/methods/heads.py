"""Extra classifier heads on a model's features, added by methods through ``Method.extend_model``.

The wrapped model keeps the model contract (``{"feat", "logits"}``) and adds ``"<name>_logits"``
for every head plus ``"base_logits"`` for the model's own head. ``"logits"`` is the head that makes
predictions, so evaluation, the EMA copy, the baseline probe and the dynamics observations all see
the predicting head, while the training step reads whichever head each loss term trains.
"""

from __future__ import annotations

from torch import Tensor, nn

BASE = "base"


class WithHeads(nn.Module):
    """``base`` (a model returning ``feat`` and ``logits``) plus named heads on its features."""

    def __init__(self, base: nn.Module, predict: str = BASE) -> None:
        super().__init__()
        self.base = base
        self.heads = nn.ModuleDict()
        self.predict = predict
        self.num_classes = getattr(base, "num_classes", None)
        self.feat_dim = getattr(base, "feat_dim", None)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = dict(self.base(x))
        out["base_logits"] = out["logits"]
        for name, head in self.heads.items():
            out[f"{name}_logits"] = head(out["feat"])
        out["logits"] = out[f"{self.predict}_logits"]
        return out


def add_head(model: nn.Module, name: str, head: nn.Module, predict: bool = False) -> WithHeads:
    """``model`` with ``head`` added under ``name`` (wrapping it once); ``predict`` makes it the predictor."""
    wrapped = model if isinstance(model, WithHeads) else WithHeads(model)
    if name == BASE or name in wrapped.heads:
        raise ValueError(f"a head named {name!r} is already on the model")
    wrapped.heads[name] = head
    if predict:
        wrapped.predict = name
    return wrapped


def head_logits(out: dict[str, Tensor], name: str = BASE) -> Tensor:
    """Logits of head ``name`` from a model output; a plain model's own head is ``base``."""
    if name == BASE:
        return out.get("base_logits", out["logits"])
    return out[f"{name}_logits"]
