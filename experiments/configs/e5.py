"""Configuration of E5 (distance to the kernel regime) and its paper preset."""

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Config:
    """E5, distance to the kernel regime: MLPs, CNNs and WideResNets across width and depth.

    Per run: relative distance of the empirical NTK at init to the infinite-width
    NTK of the same model (keras_ntk.infinite_width_kernel_fn); relative change of
    the empirical NTK during full-batch gradient descent on a regression task;
    relative error of the linearized network against the trained one. MLPs and
    CNNs sweep `depths` (hidden layers); WideResNets (architecture "wrn",
    keras_ntk.models.wide_resnet with LayerNorm) sweep the width multipliers
    `wrn_widths` at depth `wrn_depth`.
    """

    AXES: typing.ClassVar = (
        "architectures", "mlp_widths", "cnn_widths", "wrn_widths", "depths", "parametrizations", "seeds"
    )
    architectures: tuple[str, ...] = ("mlp", "cnn")
    mlp_widths: tuple[int, ...] = (32, 128, 512, 1024)
    cnn_widths: tuple[int, ...] = (8, 16, 32, 64)
    wrn_widths: tuple[int, ...] = (1, 2, 4)
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
    wrn_depth: int = 10


PAPER = dict(
    architectures=("mlp", "cnn", "wrn"),
    mlp_widths=(64, 256, 1024, 4096, 16384),
    wrn_widths=(1, 2, 4, 8),
    cnn_widths=(16, 64, 256, 1024),
    depths=(1, 2, 4, 8),
    seeds=(0, 1, 2, 3, 4),
    dataset="mnist",
    examples=128,
    test_examples=128,
    steps=1000,
)
