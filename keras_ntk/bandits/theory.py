"""Exploration scales set by NTK theory: gamma_t of NeuralUCB and nu_t of NeuralTS.

NeuralUCB (Zhou, Li & Gu, "Neural Contextual Bandits with UCB-based
Exploration", ICML 2020, Algorithm 1) plays argmax_a f(u_a) + gamma_{t-1}
sqrt(g_a^T Z_{t-1}^-1 g_a / m) with Z_t = lambda I + sum_{i <= t} g_i g_i^T / m and

  gamma_t = sqrt(1 + C1 m^(-1/6) sqrt(log m) L^4 t^(7/6) lambda^(-7/6))
            * (nu sqrt(log(det Z_t / det lambda I) + C2 m^(-1/6) sqrt(log m) L^4 t^(5/3) lambda^(-1/6)
                       - 2 log delta) + sqrt(lambda) S)
          + (lambda + C3 t L) [ (1 - eta m lambda)^(J/2) sqrt(t / lambda)
                                + m^(-1/6) sqrt(log m) L^(7/2) t^(5/3) lambda^(-5/3) (1 + sqrt(t / lambda)) ].

NeuralTS (Zhang, Zhou, Li & Gu, "Neural Thompson Sampling", ICLR 2021,
Algorithm 1 and Theorem 3.5) samples r~_a ~ N(f(u_a), nu_t^2 lambda g_a^T Z^-1 g_a / m) with

  nu_t = B + R sqrt(d~ log(1 + T K / lambda) + 2 + 2 log(1 / delta)),

where d~ log(1 + T K / lambda) = log det(I + H / lambda) over the NTK Gram H of
all T K arm inputs, which no agent can compute; we use its counterpart on the
played arms, log(det Z_t / det lambda I), the term gamma_t contains (our choice).

The constants and their defaults (`TheoryConstants`):
  width m, depth L (weight matrices: hidden layers + 1): the network's;
  lam (lambda) = 1: Theorem 4.5 of Zhou et al. asks lambda >= max(1, S^-2);
  nu = 1: the sub-Gaussian parameter of the reward noise (R in NeuralTS); rewards
    in [0, 1] are 1/2-sub-Gaussian, 1 is the value both papers' experiments start from;
  delta = 0.1: the confidence level (the bounds hold with probability 1 - delta);
  norm_bound (S, B in NeuralTS) = 1: bound on sqrt(2 h^T H^-1 h), the reward's norm
    in the NTK's RKHS (Zhou et al., Theorem 4.5; unknown in practice);
  c1 = c2 = c3 = 1: "absolute constants" the papers leave unspecified;
  eta: the step size of TrainNN; default C4 (T m L + m lambda)^-1 with C4 = 1, the
    step size of Theorem 4.5 (requires 0 < eta m lambda < 1);
  steps (J): gradient steps per retraining, the agent's.
All functions take tensors (or floats) and run inside tf.function.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import dataclasses
import math

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TheoryConstants:
    """The constants of gamma_t and nu_t (module docstring: meaning, defaults, sources)."""

    width: int
    depth: int
    rounds: int
    steps: int
    lam: float = 1.0
    nu: float = 1.0
    delta: float = 0.1
    norm_bound: float = 1.0
    c1: float = 1.0
    c2: float = 1.0
    c3: float = 1.0
    eta: float | None = None

    def __post_init__(self):
        for name in ("width", "depth", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.width < 2:
            raise ValueError(f"width must be at least 2 (log m enters gamma_t), got {self.width}.")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}.")
        for name in ("lam", "nu", "norm_bound"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("c1", "c2", "c3"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}.")
        if not 0 < self.step_size * self.width * self.lam < 1:
            raise ValueError(
                f"The theory needs 0 < eta m lambda < 1, got eta = {self.step_size:.3g}, m = {self.width}, "
                f"lambda = {self.lam}; leave eta unset for the step size of Zhou et al.'s Theorem 4.5."
            )

    @property
    def step_size(self):
        """eta: the given one, else (T m L + m lambda)^-1."""
        if self.eta is not None:
            return self.eta
        return 1.0 / (self.rounds * self.width * self.layers + self.width * self.lam)

    @property
    def layers(self):
        """L, the number of weight matrices (hidden layers + 1)."""
        return self.depth + 1


def neural_ucb_gamma(constants, t, log_det_ratio):
    """gamma_t of NeuralUCB (module docstring) after t rounds, log det ratio = log(det Z_t / det lambda I)."""
    c = constants
    t = tf.cast(t, tf.float64)
    log_det_ratio = tf.cast(log_det_ratio, tf.float64)
    m, L, lam = float(c.width), float(c.layers), c.lam
    finite_width = m ** (-1 / 6) * math.sqrt(math.log(m))
    first = tf.sqrt(1 + c.c1 * finite_width * L**4 * t ** (7 / 6) * lam ** (-7 / 6))
    radius = c.nu * tf.sqrt(
        log_det_ratio + c.c2 * finite_width * L**4 * t ** (5 / 3) * lam ** (-1 / 6) - 2 * math.log(c.delta)
    ) + math.sqrt(lam) * c.norm_bound
    optimization = (1 - c.step_size * m * lam) ** (c.steps / 2) * tf.sqrt(t / lam)
    linearization = finite_width * L**3.5 * t ** (5 / 3) * lam ** (-5 / 3) * (1 + tf.sqrt(t / lam))
    return first * radius + (lam + c.c3 * t * L) * (optimization + linearization)


def neural_ts_nu(constants, log_det_ratio):
    """nu_t of NeuralTS (module docstring), with log(det Z_t / det lambda I) for d~ log(1 + T K / lambda)."""
    c = constants
    log_det_ratio = tf.cast(log_det_ratio, tf.float64)
    return c.norm_bound + c.nu * tf.sqrt(log_det_ratio + 2 + 2 * math.log(1 / c.delta))
