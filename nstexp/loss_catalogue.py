"""The losses the objective can use and how each takes its layers, known without importing torch.

The loss families of nstexp/losses/ register their classes with `@register`; validation reads
their names and flags (`name`, `guided`, `joint`) off the source, so that checking a config
needs no torch. Where the registries are loaded already, losses registered elsewhere count too.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import Any


def registered_losses() -> dict[str, dict[str, bool]]:
    """{"style": {name: guided}, "content": {name: True}}: the losses the objective can use. Those
    of nstexp/losses/ are read off their source (`losses_in_source`), so that checking a name needs
    no torch; where the registries are loaded already, losses registered elsewhere count too."""
    found = {kind: dict(names) for kind, names in losses_in_source().items()}
    base = sys.modules.get("nstexp.losses.base")
    if base is not None:
        for name, cls in base.STYLE_LOSSES.items():
            found["style"].setdefault(name, cls.guided)
        for name, cls in base.CONTENT_LOSSES.items():
            found["content"].setdefault(name, cls.guided)
    return found


def joint_losses() -> dict[str, set[str]]:
    """{"style": names, "content": names}: the losses that take all their layers at once
    (StyleLoss.joint, ContentLoss.joint), read off their source as `registered_losses` reads them."""
    return _losses_with("joint", False, lambda value: bool(value))


def decomposing_losses() -> dict[str, set[str]]:
    """{"style": names, "content": names}: the losses whose value decomposes over positions
    (StyleLoss.decomposes is "positions" or "statistics"), which a tiled run can evaluate."""
    return _losses_with("decomposes", "none", lambda value: value != "none")


def _losses_with(attribute: str, default, keep) -> dict[str, set[str]]:
    """The losses whose class constant `attribute` (`default` where unset) passes `keep`: read off
    nstexp/losses/'s source, and where the registries are loaded already, off theirs too."""
    found = {kind: {name for name, values in classes.items() if keep(values.get(attribute, default))}
             for kind, classes in classes_in_source().items()}
    base = sys.modules.get("nstexp.losses.base")
    if base is not None:
        found["style"] |= {name for name, cls in base.STYLE_LOSSES.items() if keep(getattr(cls, attribute))}
        found["content"] |= {name for name, cls in base.CONTENT_LOSSES.items() if keep(getattr(cls, attribute))}
    return found


def min_positions() -> dict[str, dict[str, int | str]]:
    """{"style": {name: need}, "content": {...}}: the losses that need more than one position per
    side at their layers (StyleLoss.min_positions: a number, or the key of an option of the loss's
    config section), read off their source as `registered_losses` reads them."""
    found = {kind: {name: values["min_positions"] for name, values in classes.items()
                    if values.get("min_positions", 1) != 1}
             for kind, classes in classes_in_source().items()}
    base = sys.modules.get("nstexp.losses.base")
    if base is not None:
        for kind, table in (("style", base.STYLE_LOSSES), ("content", base.CONTENT_LOSSES)):
            for name, cls in table.items():
                if cls.min_positions != 1:
                    found[kind].setdefault(name, cls.min_positions)
    return found


@functools.lru_cache(maxsize=None)
def losses_in_source() -> dict[str, dict[str, bool]]:
    """The losses of nstexp/losses/ (nstexp.losses.base): the classes decorated with @register in
    the families nstexp/losses/__init__.py imports, with their `name` and `guided` (default True)."""
    return {kind: {name: bool(values.get("guided", True)) for name, values in classes.items()}
            for kind, classes in classes_in_source().items()}


@functools.lru_cache(maxsize=None)
def classes_in_source() -> dict[str, dict[str, dict[str, Any]]]:
    """{"style": {name: constants}, "content": {...}}: each class decorated with @register in the
    families nstexp/losses/__init__.py imports, in its order, with the constants its body assigns
    (`name`, `guided`, `joint`, `min_positions`)."""
    found: dict[str, dict[str, dict[str, Any]]] = {"style": {}, "content": {}}
    folder = Path(__file__).resolve().parent / "losses"
    # The families nstexp/losses/__init__.py imports, in its order, which is the registries' order.
    families = [node.module.rpartition(".")[2] for node in ast.parse((folder / "__init__.py").read_text()).body
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nstexp.losses.")]
    for family in families:
        for node in ast.parse((folder / f"{family}.py").read_text()).body:
            if not isinstance(node, ast.ClassDef) or not any(
                    isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list):
                continue
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            values = {target.id: stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                      for target in stmt.targets if isinstance(target, ast.Name) and isinstance(stmt.value, ast.Constant)}
            found["style" if "StyleLoss" in bases else "content"][values["name"]] = values
    return found
