"""The config's documentation, read from the pydantic models that validate it (one source).

``config_keys()`` walks :class:`triptych.config.Config` and lists every key with its type,
default and description (``triptych config --schema``); ``commented_yaml(config)`` writes a
config as YAML with each key's description as its comment (``triptych init``, and the
config.yaml that ``triptych compare`` writes). Adding a field to config.py with a
``description=`` is all it takes for both to show it.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from triptych.config import Config

REQUIRED = "required"
COMMENT_COLUMN = 44
_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))


@dataclass(frozen=True)
class ConfigKey:
    """One config key: ``path`` as written in YAML (``experiments[].training.epochs``)."""

    path: str
    type: str
    default: Any  # REQUIRED when the key has no default
    description: str


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[ConfigKey]:
    """Every key of ``model`` and of its sections, depth first, in declaration order."""
    keys = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(ConfigKey(path, type_text(field), _default(field), field.description or ""))
        section = _section_model(field.annotation)
        if section is not None:
            is_list = typing.get_origin(field.annotation) is list
            keys.extend(config_keys(section, f"{path}{'[]' if is_list else ''}."))
    return keys


def format_schema(keys: list[ConfigKey]) -> str:
    """One key per paragraph: path, type, default, then the description indented.

    A section's default is the defaults of its keys, listed below it, so it is not repeated."""
    blocks = []
    for key in keys:
        if key.default == REQUIRED:
            about = f"{key.type}; required"
        elif key.type.endswith("section"):
            about = key.type
        else:
            about = f"{key.type}; default {_flow(key.default)}"
        blocks.append(f"{key.path}  ({about})\n    {key.description}")
    return "\n".join(blocks)


def commented_yaml(config: BaseModel, header: str = "") -> str:
    """``config`` as YAML that loads back to the same config, every key with its description."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _emit(config, 0, lines)
    return "\n".join(lines) + "\n"


def _emit(obj: BaseModel, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for name, field in type(obj).model_fields.items():
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            lines.append(_with_comment(f"{pad}{name}:", field.description))
            _emit(value, indent + 2, lines)
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            lines.append(_with_comment(f"{pad}{name}:", field.description))
            for item in value:
                start = len(lines)
                _emit(item, indent + 4, lines)
                lines[start] = f"{pad}  - {lines[start][indent + 4:]}"
        else:
            lines.append(_with_comment(f"{pad}{name}: {_flow(value)}", field.description))


def _with_comment(text: str, description: str | None) -> str:
    if not description:
        return text
    return f"{text.ljust(COMMENT_COLUMN - 2)}  # {description}"


def _flow(value: Any) -> str:
    """A value as one line of YAML (PyYAML's own quoting, so it loads back as the same value)."""
    return yaml.safe_dump(value, default_flow_style=True, width=2**31, sort_keys=False).removesuffix("\n...\n").strip()


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return REQUIRED
    else:
        value = field.default
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def type_text(field: FieldInfo) -> str:
    """The field's type as a config writer reads it: ``int >= 1``, ``sgd | adamw | adam``, ``float | null``."""
    text = _annotation_text(field.annotation)
    bounds = [f"{symbol} {getattr(m, attr)}" for m in field.metadata for kind, attr, symbol in _BOUNDS
              if isinstance(m, kind)]
    return " ".join([text, *bounds]) if bounds else text


def _annotation_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_annotation_text(a) for a in args)
    if origin is list:
        item = _annotation_text(args[0])
        return f"list of ({item})" if " | " in item else f"list of {item}"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None
