"""Config dataclasses as command lines: a field declares its help (and choices) beside its
default with :func:`option`, and :func:`add_options` makes every field a flag, so the
command line and the dataclass cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Callable, Sequence


def option(default: Any = dataclasses.MISSING, *, help: str,
           choices: Sequence[Any] | None = None,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its command-line help; no default: a positional argument."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help, "choices": choices})


def _converter(hint: Any) -> Callable[[str], Any]:
    """What turns a command-line string into a value of a field's annotation ``hint``
    (``X | None``: as X; the None comes from the default)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"option {hint}: one type (or it | None) per field")
        hint = args[0]
    if typing.get_origin(hint) is dict or hint is dict:
        return json.loads
    if hint not in (bool, int, float, str):
        raise TypeError(f"option type {hint} has no command-line form")
    return hint


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per field of dataclass ``cls``: ``--field-name`` with the field's
    default (``--x/--no-x`` for a bool), or a positional argument for a field without
    one; help and choices from :func:`option`."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} is not declared with option()")
        convert = _converter(hints[field.name])
        kw: dict[str, Any] = {"help": field.metadata["help"]}
        if field.metadata["choices"] is not None:
            kw["choices"] = field.metadata["choices"]
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            parser.add_argument(field.name, type=convert, **kw)
            continue
        flag = "--" + field.name.replace("_", "-")
        if convert is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                **kw)
        else:
            parser.add_argument(flag, type=convert, default=default, **kw)


def from_options(cls: type, args: argparse.Namespace) -> Any:
    """The ``cls`` instance that ``args`` (parsed with :func:`add_options`) describe."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})
