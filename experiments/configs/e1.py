"""Configuration of E1 (finite vs infinite width) and its paper preset."""

import dataclasses
import typing


@dataclasses.dataclass(frozen=True)
class Config:
    """E1, finite vs infinite width: MLPs on 1-D regression with a gap in the data.

    Each network and its linearization around theta_0 are trained by the same
    trust-region Newton-CG method on 1/2 sum (f - y)^2 + noise_std^2 / 2
    ||theta - theta_0||^2 (our choice), whose minimizer for the linearization is the
    NTK-GP posterior mean, until ||grad|| <= gradient_tolerance * ||grad at theta_0||
    or max_steps Newton steps (max_cg_iterations Hessian-vector products each).

    The activation is erf (our choice): the objective must be differentiable for
    its gradient to vanish at the minimizer. With ReLU the trained nets put
    activation kinks exactly on training points (pre-activations of 1e-12 at the
    minimizer of a width-16 net), where the gradient jumps, and no method drives
    ||grad|| below about 1e-3 ||grad_0||; `--activation relu` runs anyway and the
    report says which runs did not converge. b_std = 1 spreads the units'
    transitions over the data; with 0.1 they crowd near x = 0 and no width fits
    the wiggles.
    """

    AXES: typing.ClassVar = ("widths", "depths", "parametrizations", "seeds")
    widths: tuple[int, ...] = (16, 64, 256)
    depths: tuple[int, ...] = (2,)
    parametrizations: tuple[str, ...] = ("ntk", "standard")
    seeds: tuple[int, ...] = (0, 1)
    activation: str = "erf"
    w_std: float = 2**0.5
    b_std: float = 1.0
    train_points: int = 100
    noise_std: float = 0.1
    gap: tuple[float, ...] = (-0.2, 0.4)
    grid_points: int = 200
    gradient_tolerance: float = 1e-5
    max_steps: int = 300
    max_cg_iterations: int = 100
    data_seed: int = 0


PAPER = dict(
    widths=(16, 64, 256, 1024, 4096), depths=(2, 3, 4), seeds=(0, 1, 2, 3, 4), max_steps=1000
)
