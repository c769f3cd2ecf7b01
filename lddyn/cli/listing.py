"""``lddyn ls``: the presets, sweep grids, methods and figures, one line each with what it is.

Names and paths are never cut: the description column takes what is left of the terminal's width
and ends in an ellipsis when it does not fit (the full text is the file's first comment sentence).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from lddyn.config import PRESET_DIR

console = Console()
SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")


def first_sentence(text: str) -> str:
    """The first sentence of a paragraph (the whole paragraph when it has no full stop)."""
    flat = " ".join(text.split())
    found = SENTENCE.match(flat)
    return found.group(1) if found else flat


def leading_comment(path: Path) -> str:
    """The comment block at the top of a YAML file, without the ``#`` marks."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def docstring_summary(module_name: str) -> str:
    """The first sentence of a module's docstring."""
    doc = (sys.modules[module_name].__doc__ or "").replace("``", "")
    return first_sentence(doc.strip().split("\n\n")[0])


def cut(text: str, room: int) -> str:
    """``text`` cut to ``room`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= room else text[: room - 1] + "…"


def print_listing(title: str, header: str, rows: Iterable[tuple[str, str]]) -> None:
    """A title, then ``name  description`` lines: the name whole, the description cut to the width left."""
    rows = list(rows)
    width = max([len(header), *(len(name) for name, _ in rows)])
    room = max(console.width - width - 2, 10)
    console.print(f"[bold]{escape(title)}[/]", highlight=False, soft_wrap=True)
    console.print(f"[dim]{header:<{width}}  description[/]", highlight=False, soft_wrap=True)
    for name, description in rows:
        console.print(escape(f"{name:<{width}}  {cut(description, room)}"), highlight=False, soft_wrap=True)
    console.print()


def yaml_rows(folder: Path, suffix: str, full_path: bool) -> list[tuple[str, str]]:
    """(preset name or grid path, first sentence of its leading comment) of every file in ``folder``."""
    where = folder.relative_to(PRESET_DIR.parent).as_posix() + "/"
    files = sorted(folder.glob(f"*.{suffix}"))
    return [(f"{where}{p.name}" if full_path else p.stem, first_sentence(leading_comment(p))) for p in files]


def ls() -> None:
    """List the presets (by folder), sweep grids, methods and figures, with a one-line description each."""
    from lddyn.analysis.figures import FIGURES, REQUIRES
    from lddyn.methods import METHODS

    for folder in sorted({p.parent for p in PRESET_DIR.rglob("*.yaml")}):
        where = folder.relative_to(PRESET_DIR.parent).as_posix() + "/"
        print_listing(f"presets in {where} (lddyn run -p NAME)", "preset", yaml_rows(folder, "yaml", False))
    for folder in sorted({p.parent for p in PRESET_DIR.rglob("*.yml")}):
        print_listing("sweep grids", "lddyn sweep FILE", yaml_rows(folder, "yml", True))
    methods = [(n, docstring_summary(METHODS.get(n).__module__)) for n in METHODS.names()]
    print_listing("methods (--set methods=a,b)", "method", methods)
    figures = [
        (name, f"{docstring_summary(plot.__module__)} Reads: {', '.join(REQUIRES[name])}.")
        for name, plot in FIGURES.items()
    ]
    print_listing("figures (lddyn plot RUN --figure NAME)", "figure", figures)
