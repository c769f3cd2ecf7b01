"""The 1000 -> 127 class mapping of Small-ImageNet-127, from the text files its preparation uses.

``map_clsloc.txt`` gives each ImageNet class (``wnid index name``, index 1-based) its wnid;
``imgname2folder.txt`` (``image_name folder``) puts each image in one of the 127 super-class folders,
and the class of an image goes where its first listed image goes; ``synset_words_up_down_127.txt``
orders the 127 super-classes (its first token per line). This is the reference's preparation step
done at load time, so the original down-sampled pickles can be used as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lddyn.data.errors import DataFileError

MAP_FILES = ("map_clsloc.txt", "imgname2folder.txt", "synset_words_up_down_127.txt")


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        raise DataFileError(f"{path} is missing (needed to map the 1000 ImageNet classes to 127)")
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path} is not a text file: {exc}") from exc


def _wnid_by_index(path: Path) -> dict[int, str]:
    out = {}
    for fields in _lines(path):
        if len(fields) < 2 or not fields[1].isdigit():
            raise DataFileError(f"{path}: expected lines 'wnid index name', got {' '.join(fields)!r}")
        out[int(fields[1]) - 1] = fields[0]
    return out


def _folder_by_wnid(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for fields in _lines(path):
        if len(fields) != 2:
            raise DataFileError(f"{path}: expected lines 'image_name folder', got {' '.join(fields)!r}")
        out.setdefault(fields[0].rsplit(".", 1)[0].split("_")[0], fields[1])  # n01440764_10026.JPEG
    return out


def class_map_127(folder: Path) -> tuple[np.ndarray, int]:
    """(map, K): map[i] = 0-based super-class of 0-based ImageNet class i; K = number of super-classes."""
    wnids = _wnid_by_index(folder / MAP_FILES[0])
    folders = _folder_by_wnid(folder / MAP_FILES[1])
    order = {fields[0]: k for k, fields in enumerate(_lines(folder / MAP_FILES[2]))}
    mapping = np.full(max(wnids) + 1, -1, dtype=np.int64)
    for index, wnid in wnids.items():
        if wnid not in folders:
            raise DataFileError(f"{folder / MAP_FILES[1]} lists no image of class {wnid}")
        if folders[wnid] not in order:
            raise DataFileError(f"{folder / MAP_FILES[2]} has no line for super-class {folders[wnid]}")
        mapping[index] = order[folders[wnid]]
    if (mapping < 0).any():
        gap = int(np.flatnonzero(mapping < 0)[0]) + 1
        raise DataFileError(f"{folder / MAP_FILES[0]} has no line for ImageNet class index {gap}")
    return mapping, len(order)
