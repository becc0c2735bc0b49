"""Typed configurations of the experiments, their presets and command-line overrides.

One module per experiment (configs/e1.py, ...) defines `Config`, a frozen
dataclass whose defaults are the "quick" preset, and `PAPER`, the fields the
"paper" preset changes. These modules import nothing heavy, so every
`--help` answers at once. Every field is a command-line option of
`keras-ntk run NAME` (`--field-name`); fields listed in a config's AXES span
its sweep, the others are settings shared by every run. Presets: "quick"
(2 CPU cores, bundled or generated data, minutes) and "paper" (a GPU, the
paper's widths).
"""

import dataclasses
import importlib
import typing

from .. import EXPERIMENTS

PRESETS = ("quick", "paper")


def _module(name):
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}.")
    return importlib.import_module(f".{name.lower()}", __name__)


def config_class(name):
    """The config dataclass of experiment `name` ("E1", ...)."""
    return _module(name).Config


def preset(name, preset_name):
    """The config of experiment `name` ("E1", ...) for preset "quick" or "paper"."""
    module = _module(name)
    if preset_name not in PRESETS:
        raise ValueError(f"Unknown preset {preset_name!r}; expected one of {', '.join(PRESETS)}.")
    config = module.Config()
    return dataclasses.replace(config, **module.PAPER) if preset_name == "paper" else config


def parse_value(field, text):
    """Parse the command-line text of one config field by its annotation."""
    kind = field.type
    try:
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            values = tuple(item(v) for v in text.split(",") if v.strip())
            if not values:
                raise ValueError("empty list")
            return values
        return kind(text)
    except ValueError as error:
        raise ValueError(f"--{option_name(field.name)}: cannot read {text!r} as {describe(kind)} ({error}).")


def describe(kind):
    if typing.get_origin(kind) is tuple:
        return f"comma-separated {typing.get_args(kind)[0].__name__}s"
    return kind.__name__


def option_name(field_name):
    return field_name.replace("_", "-")


def fields(config_class):
    return dataclasses.fields(config_class)


def override(config, overrides):
    """A copy of `config` with fields replaced; `overrides` maps field name -> text or value."""
    known = {f.name: f for f in fields(type(config))}
    changes = {}
    for name, value in overrides.items():
        if name not in known:
            raise ValueError(f"{type(config).__name__} has no field {name!r}; fields: {', '.join(known)}.")
        changes[name] = parse_value(known[name], value) if isinstance(value, str) else value
    return dataclasses.replace(config, **changes)


def settings(config):
    """The fields that are not sweep axes, as a JSON-ready dict: what every run shares."""
    return {
        f.name: list(v) if isinstance(v, tuple) else v
        for f in fields(type(config))
        if f.name not in config.AXES
        for v in [getattr(config, f.name)]
    }
