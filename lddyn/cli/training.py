"""The training side of ``lddyn run`` and ``lddyn sweep``, imported when those commands run.

Kept out of ``lddyn.cli.main``'s imports so that ``lddyn --help``, ``--version`` and the analysis
commands start without torch.
"""

from __future__ import annotations

from lddyn.config import ConfigError
from lddyn.sinks.parquet import CorruptPartError
from lddyn.train.callbacks.tensorboard import MissingExtra
from lddyn.train.distributed import is_main_process, world_from_env
from lddyn.train.outcome import NonFiniteLoss, RunInterrupted
from lddyn.train.run import RunDirError, resume_run, start_run

# errors that are the user's input, reported as one line with exit code 2
EXPECTED = (ConfigError, RunDirError, CorruptPartError, FileNotFoundError, ValueError, MissingExtra)

__all__ = [
    "EXPECTED",
    "NonFiniteLoss",
    "RunInterrupted",
    "is_main_process",
    "resume_run",
    "start_run",
    "world_from_env",
]
