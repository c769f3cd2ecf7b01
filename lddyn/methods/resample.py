"""Class-balanced resampling of the labeled set: changes the measure the step's sum runs over."""

from __future__ import annotations

from dataclasses import dataclass

from lddyn.config import MethodConfig
from lddyn.data.samplers import ClassBalanced, IndexStream
from lddyn.methods.base import Method
from lddyn.methods.registry import METHODS


@dataclass(frozen=True)
class ResampleConfig(MethodConfig):
    pass


@METHODS.register("resample")
class Resample(Method):
    name = "resample"
    Config = ResampleConfig

    def stream(self, which: str) -> IndexStream | None:
        if which != "labeled":
            return None
        data = self.info.data
        return ClassBalanced(data.y_lb, data.num_classes)
