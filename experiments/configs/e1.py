"""Configuration of E1 (finite vs infinite width) and its paper preset."""

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Config:
    """E1, finite vs infinite width: MLPs on 1-D regression with a gap in the data.

    Each network is trained by full-batch Adam whose learning rate decays to zero
    over `steps` (a cosine schedule) on 1/2 sum (f - y)^2 + noise_std^2 / 2
    ||theta - theta_0||^2, whose linearization around theta_0 has the NTK-GP
    posterior mean as its minimizer (our choice). b_std = 1 spreads
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


PAPER = dict(widths=(16, 64, 256, 1024, 4096), depths=(2, 3, 4), seeds=(0, 1, 2, 3, 4), steps=20000)
