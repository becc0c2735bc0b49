"""Configuration of E4 (continual learning) and its paper preset."""

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Config:
    """E4, continual learning: does width reduce forgetting, and in which regime?

    MLPs learn Permuted / Rotated image streams and WideResNets a Split stream,
    one task after another with SGD, under two regimes: "budget" trains
    budget_epochs epochs per task; "converge" trains each task until the running
    training accuracy of an epoch reaches target_accuracy, at most max_epochs
    epochs. Per run: the accuracy matrix, average accuracy, average forgetting
    (best accuracy of an old task after it was learned minus its final one) and
    the relative change of the empirical NTK on a fixed probe set across each
    task. Datasets: "auto" (Fashion-MNIST if its files are on this machine, e.g.
    the Debian package, else scikit-learn digits), "fashion_mnist", "mnist",
    "digits", "cifar10", "cifar100". heads: "auto" (one shared head for Permuted
    and Rotated, one head per task for Split), "multi" or "single".
    """

    AXES: typing.ClassVar = (
        "architectures", "mlp_streams", "wrn_streams", "mlp_widths", "wrn_widths",
        "parametrizations", "regimes", "seeds",
    )
    architectures: tuple[str, ...] = ("mlp", "wrn")
    mlp_streams: tuple[str, ...] = ("permuted", "rotated")
    wrn_streams: tuple[str, ...] = ("split",)
    mlp_widths: tuple[int, ...] = (16, 64, 256)
    wrn_widths: tuple[int, ...] = (1,)
    parametrizations: tuple[str, ...] = ("standard",)
    regimes: tuple[str, ...] = ("budget", "converge")
    seeds: tuple[int, ...] = (0, 1)
    mlp_dataset: str = "auto"
    wrn_dataset: str = "digits"
    tasks: int = 5
    rotation_step: float = 22.5
    classes_per_task: int = 2
    heads: str = "auto"
    train_examples: int = 500
    test_examples: int = 500
    probe_examples: int = 25
    mlp_depth: int = 2
    wrn_depth: int = 10
    batch_size: int = 32
    learning_rate_standard: float = 0.05
    learning_rate_ntk: float = 4.0
    budget_epochs: int = 1
    target_accuracy: float = 0.95
    max_epochs: int = 30
    data_seed: int = 0


PAPER = dict(
    mlp_widths=(32, 128, 512, 2048, 8192),
    rotation_step=9.0,
    wrn_widths=(1, 2, 4, 8),
    parametrizations=("standard", "ntk"),
    seeds=(0, 1, 2, 3, 4),
    mlp_dataset="mnist",
    wrn_dataset="cifar100",
    tasks=20,
    classes_per_task=5,
    train_examples=10000,
    test_examples=2000,
    probe_examples=100,
    wrn_depth=16,
    batch_size=10,
    learning_rate_standard=0.01,
    max_epochs=100,
)
