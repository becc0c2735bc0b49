"""Configuration of E2 (second-order optimization in the kernel regime) and its paper preset."""

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Config:
    """E2, second-order optimization: NGD's convergence conditions and training curves.

    Per run (architecture, parametrization, depth, width, seed), on `examples`
    training inputs with centered one-hot targets (N, K): lambda_min and the
    condition number of the Gram G = J J^T (N K, N K) at init; the empirical
    stability constant C' of Zhang et al. (2019) along the trajectory of
    full-batch natural gradient descent (damped Gauss-Newton with
    Levenberg-Marquardt damping, initial damping ngd_damping times G's mean
    eigenvalue); training loss 1/(2N) sum ||f - y||^2 against step and wall-clock
    time of NGD, gradient descent and Adam, each with the learning rate of its
    grid that reaches the lowest final loss. GD's grid is in units of its
    stability limit 2N / lambda_max(G). loss_threshold (a fraction of the loss at
    init) defines "steps to reach" in the report.
    """

    AXES: typing.ClassVar = (
        "architectures", "mlp_widths", "cnn_widths", "depths", "parametrizations", "seeds"
    )
    architectures: tuple[str, ...] = ("mlp", "cnn")
    mlp_widths: tuple[int, ...] = (32, 256, 1024)
    cnn_widths: tuple[int, ...] = (8, 32)
    depths: tuple[int, ...] = (1, 2)
    parametrizations: tuple[str, ...] = ("ntk", "standard")
    seeds: tuple[int, ...] = (0,)
    activation: str = "relu"
    dataset: str = "digits"
    examples: int = 32
    cnn_pooling: str = "flatten"
    ngd_steps: int = 6
    gd_steps: int = 150
    adam_steps: int = 150
    ngd_learning_rates: tuple[float, ...] = (0.5, 1.0)
    gd_step_fractions: tuple[float, ...] = (0.5, 1.0)
    adam_learning_rates: tuple[float, ...] = (1e-3, 1e-2)
    ngd_damping: float = 1e-3
    loss_threshold: float = 0.01
    lanczos_tolerance: float = 1e-3
    data_seed: int = 0


PAPER = dict(
    dataset="cifar10",
    examples=128,
    mlp_widths=(64, 256, 1024, 4096),
    cnn_widths=(16, 64, 256),
    depths=(1, 2, 4),
    seeds=(0, 1, 2),
    ngd_steps=50,
    gd_steps=3000,
    adam_steps=3000,
    ngd_learning_rates=(0.25, 0.5, 1.0),
    gd_step_fractions=(0.25, 0.5, 1.0),
    adam_learning_rates=(1e-4, 1e-3, 1e-2),
    lanczos_tolerance=1e-5,
)
