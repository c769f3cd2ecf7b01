"""Reading dataset pickles from elsewhere without letting them run code.

``pickle.load`` calls whatever a file names, so a crafted ``data_batch_1`` on a shared drive could
run any command. The CIFAR and down-sampled ImageNet pickles only ever hold builtin containers,
bytes, strings and numbers, and numpy arrays, dtypes and scalars as numpy pickles them (numpy 1 and
2 module paths, protocols 0 to 5, and Python 2's ``encoding``). Only those names are resolved; any
other raises ``DataFileError`` naming the file and what it asked for, before anything is called.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lddyn.data.errors import DataFileError

_ARRAY = np.zeros(1)
_RECONSTRUCT = np.ndarray.__reduce__(_ARRAY)[0]  # numpy's own functions, whatever their module path
_FROMBUFFER = _ARRAY.__reduce_ex__(5)[0]
_SCALAR = np.float64(0).__reduce__()[0]
_NUMPY_HOMES = ("numpy.core", "numpy._core")

ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"{home}.multiarray", "_reconstruct"): _RECONSTRUCT for home in _NUMPY_HOMES},
    **{(f"{home}.multiarray", "scalar"): _SCALAR for home in _NUMPY_HOMES},
    **{(f"{home}.numeric", "_frombuffer"): _FROMBUFFER for home in _NUMPY_HOMES},
    ("_codecs", "encode"): codecs.encode,  # how protocols 0-2 write bytes
    ("builtins", "bytearray"): bytearray,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _Restricted(pickle.Unpickler):
    def __init__(self, fh: Any, path: Path, what: str, encoding: str) -> None:
        super().__init__(fh, encoding=encoding)
        self.path, self.what = path, what

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise DataFileError(
                f"{self.path} asks to call {module}.{name}, which a {self.what} file never holds; "
                "refusing to load it (a pickle naming other objects can run code)"
            ) from None


def load_data_pickle(path: Path, what: str, encoding: str = "bytes") -> Any:
    """The object pickled in ``path`` (a ``what`` file), refusing any name outside ``ALLOWED``."""
    with open(path, "rb") as fh:
        return _Restricted(fh, path, what, encoding).load()
