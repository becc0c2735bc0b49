"""Typed configurations of the experiments, their presets and command-line overrides.

Every field is a command-line option of `keras-ntk run NAME` (`--field-name`);
fields listed in a config's AXES span its sweep, the others are settings shared
by every run. Presets: "quick" (2 CPU cores, bundled or generated
data, minutes) and "paper" (a GPU, the paper's widths).
"""

import dataclasses
import typing

PRESETS = ("quick", "paper")


@dataclasses.dataclass(frozen=True)
class E1Config:
    """E1, finite vs infinite width: MLPs on 1-D regression with a gap in the data.

    Each network is trained by full-batch Adam whose learning rate decays to zero
    over `steps` (a cosine schedule) on 1/2 sum (f - y)^2 + noise_std^2 / 2
    ||theta - theta_0||^2, whose linearization around theta_0 has the NTK-GP
    posterior mean as its minimizer (our choice, PAPER.md E1). b_std = 1 spreads
    the ReLU kinks of 1-D inputs over the data; with 0.1 they crowd near x = 0 and
    no width fits the wiggles.
    """

    AXES: typing.ClassVar = ("widths", "depths", "parametrizations", "seeds")
    widths: tuple[int, ...] = (16, 64, 256, 1024)
    depths: tuple[int, ...] = (2,)
    parametrizations: tuple[str, ...] = ("ntk", "standard")
    seeds: tuple[int, ...] = (0, 1)
    activation: str = "relu"
    w_std: float = 2**0.5
    b_std: float = 1.0
    train_points: int = 100
    noise_std: float = 0.1
    gap: tuple[float, ...] = (-0.2, 0.4)
    grid_points: int = 200
    steps: int = 3000
    learning_rate: float = 1e-2
    data_seed: int = 0


@dataclasses.dataclass(frozen=True)
class E5Config:
    """E5, distance to the kernel regime: MLPs and CNNs across width and depth.

    Per run: relative distance of the empirical NTK at init to the infinite-width
    NTK (same parametrization); relative change of the empirical NTK during
    full-batch gradient descent on a regression task; relative error of the
    linearized network against the trained one (PAPER.md E5).
    """

    AXES: typing.ClassVar = (
        "architectures", "mlp_widths", "cnn_widths", "depths", "parametrizations", "seeds"
    )
    architectures: tuple[str, ...] = ("mlp", "cnn")
    mlp_widths: tuple[int, ...] = (32, 128, 512, 1024)
    cnn_widths: tuple[int, ...] = (8, 16, 32, 64)
    depths: tuple[int, ...] = (1, 2, 4)
    parametrizations: tuple[str, ...] = ("ntk", "standard")
    seeds: tuple[int, ...] = (0, 1)
    activation: str = "relu"
    dataset: str = "digits"
    examples: int = 32
    test_examples: int = 32
    cnn_pooling: str = "flatten"
    steps: int = 100
    step_fraction: float = 0.5
    data_seed: int = 0


CONFIGS = {"E1": E1Config, "E5": E5Config}

_PAPER = {
    "E1": dict(widths=(16, 64, 256, 1024, 4096), depths=(2, 3, 4), seeds=(0, 1, 2, 3, 4), steps=20000),
    "E5": dict(
        mlp_widths=(64, 256, 1024, 4096, 16384),
        cnn_widths=(16, 64, 256, 1024),
        depths=(1, 2, 4, 8),
        seeds=(0, 1, 2, 3, 4),
        dataset="mnist",
        examples=128,
        test_examples=128,
        steps=1000,
    ),
}


def preset(name, preset_name):
    """The config of experiment `name` ("E1", ...) for preset "quick" or "paper"."""
    if name not in CONFIGS:
        raise ValueError(f"Unknown experiment {name!r}; expected one of {', '.join(CONFIGS)}.")
    if preset_name not in PRESETS:
        raise ValueError(f"Unknown preset {preset_name!r}; expected one of {', '.join(PRESETS)}.")
    config = CONFIGS[name]()
    return dataclasses.replace(config, **_PAPER[name]) if preset_name == "paper" else config


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
