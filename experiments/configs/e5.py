"""Configuration of E5 (distance to the kernel regime) and its paper preset."""

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Config:
    """E5, distance to the kernel regime: MLPs and CNNs across width and depth.

    Per run: relative distance of the empirical NTK at init to the infinite-width
    NTK (same parametrization); relative change of the empirical NTK during
    full-batch gradient descent on a regression task; relative error of the
    linearized network against the trained one.
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


PAPER = dict(
    mlp_widths=(64, 256, 1024, 4096, 16384),
    cnn_widths=(16, 64, 256, 1024),
    depths=(1, 2, 4, 8),
    seeds=(0, 1, 2, 3, 4),
    dataset="mnist",
    examples=128,
    test_examples=128,
    steps=1000,
)
