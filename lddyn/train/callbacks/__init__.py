"""Callbacks that act at step boundaries; the trainer's loop only dispatches to them."""

from lddyn.train.callbacks.checkpoint import Checkpoint
from lddyn.train.callbacks.ema import EMA
from lddyn.train.callbacks.evaluate import Evaluate
from lddyn.train.callbacks.progress import ProgressDisplay
from lddyn.train.callbacks.tables import PruningTable, TrainTable

__all__ = ["EMA", "Checkpoint", "Evaluate", "ProgressDisplay", "PruningTable", "TrainTable"]
