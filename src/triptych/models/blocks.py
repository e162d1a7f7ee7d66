"""A backbone's named blocks, from its layer names: what ``unfreeze_blocks`` can name.

Pure name logic (no TensorFlow). Layers come in graph order (``model.layers``). A layer whose
name matches the family's :class:`~triptych.models.catalog.BlockScheme` belongs to the block it
names. An unnamed layer (Keras auto-names some: Inception branches, Xception's ``add_11``)
belongs to the next named block (branches come before the concatenation that closes their
block) or, for families that say so, to the previous one (Xception's residual addition ends its
block). Layers after the last named one (e.g. EfficientNet's ``top_conv``) belong to the last
block; layers before the first named one are the stem, in no block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from triptych.errors import InvalidArgumentError
from triptych.models.catalog import BlockScheme

LAST_N = re.compile(r"^last\s+(\d+)$", re.IGNORECASE)
_COUNTED = re.compile(r"^(.*?)(\d+|[a-z])$")  # a name ending in a number or a letter: conv5_block16, block7a


@dataclass(frozen=True)
class BlockLayout:
    stem: tuple[str, ...]
    blocks: dict[str, tuple[str, ...]]  # block name -> its layer names, both in graph order

    def layers_of(self, block_names: Sequence[str]) -> list[str]:
        return [layer for block in block_names for layer in self.blocks[block]]


def block_layout(layer_names: Sequence[str], scheme: BlockScheme) -> BlockLayout:
    """Assign each layer to a block (see the module docstring)."""
    regex = re.compile(scheme.pattern)
    stem: list[str] = []
    blocks: dict[str, list[str]] = {}
    pending: list[str] = []  # unnamed layers waiting for the block that closes them
    for layer in layer_names:
        match = regex.match(layer)
        if not match:
            if not blocks:
                stem.append(layer)
            elif scheme.unnamed == "previous":
                blocks[list(blocks)[-1]].append(layer)
            else:
                pending.append(layer)
            continue
        members = blocks.setdefault(match.expand(scheme.name), [])
        members.extend(pending)
        members.append(layer)
        pending.clear()
    if blocks:
        blocks[list(blocks)[-1]].extend(pending)
    return BlockLayout(tuple(stem), {name: tuple(layers) for name, layers in blocks.items()})


def select_blocks(layout: BlockLayout, requested: Sequence[str], model_name: str) -> list[str]:
    """The blocks that ``requested`` names, in graph order.

    Each entry is a block name (``block14``), a prefix of block names that ends before a
    letter or ``_`` (``conv5`` = every ``conv5_block*``, ``block7`` = ``block7a``, ``block7b``...),
    or ``"last N"`` (the last N blocks)."""
    names = list(layout.blocks)
    chosen: set[str] = set()
    for request in requested:
        request = request.strip()
        if not request:
            raise InvalidArgumentError(f"blocks: an empty block name for {model_name}; name a block or 'last N'")
        last = LAST_N.match(request)
        if last:
            count = int(last.group(1))
            if not 1 <= count <= len(names):
                raise InvalidArgumentError(
                    f"blocks: {request!r} for {model_name}, which has {len(names)} blocks; use 'last N' with "
                    f"N from 1 to {len(names)}"
                )
            chosen.update(names[-count:])
            continue
        matches = [name for name in names if _is_named_by(name, request)]
        if not matches:
            raise InvalidArgumentError(
                f"blocks: {model_name} has no block {request!r}; its blocks are {compact_names(names)} "
                "(a prefix ending before '_' or a letter names several: conv5, block7), or 'last N'"
            )
        chosen.update(matches)
    return [name for name in names if name in chosen]


def _is_named_by(block: str, request: str) -> bool:
    if block == request:
        return True
    # conv5 names conv5_block1, block7 names block7a, but block1 must not name block14.
    return block.startswith(request) and not block[len(request)].isdigit()


def compact_names(names: Sequence[str]) -> str:
    """``conv2_block1, ..., conv2_block6, conv3_block1`` -> ``conv2_block1..6, conv3_block1``:
    runs of names that count up (by number or by letter) are shown as one range."""
    runs: list[list[str]] = []  # [stem, first suffix, last suffix]
    for name in names:
        match = _COUNTED.match(name)
        stem, suffix = (match.group(1), match.group(2)) if match else (name, "")
        if runs and suffix and runs[-1][0] == stem and runs[-1][2] and _follows(runs[-1][2], suffix):
            runs[-1][2] = suffix
        else:
            runs.append([stem, suffix, suffix])
    return ", ".join(f"{stem}{first}..{last}" if first != last else f"{stem}{first}" for stem, first, last in runs)


def _follows(previous: str, suffix: str) -> bool:
    if previous.isdigit() and suffix.isdigit():
        return int(suffix) == int(previous) + 1
    return previous.isalpha() and suffix.isalpha() and ord(suffix) == ord(previous) + 1
