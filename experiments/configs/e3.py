"""Configuration of E3 (neural contextual bandits) and its paper preset."""

import dataclasses
import math
import typing

AGENTS = (
    "greedy",
    "neural_ucb_diag",
    "neural_ucb_exact",
    "neural_ts_diag",
    "laplace_ucb_last_layer",
    "laplace_ucb_diag",
    "laplace_ucb_kron",
    "laplace_ts_last_layer",
    "laplace_ts_diag",
    "laplace_ts_kron",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """E3, neural contextual bandits: NTK-theory exploration vs evidence-tuned linearized Laplace.

    One arm per class of a classification dataset, reward 1 for the true class.
    NeuralUCB / NeuralTS run once with the exploration scale of the NTK theory
    (gamma_t, nu_t, constants --lam, --theory-*) and once per value of
    --gamma-grid (the report keeps the best in hindsight: "tuned"); the Laplace
    UCB / TS agents tune their prior precision and noise by the Laplace evidence
    at every retraining. Neural agents with the exact Z^-1 run only where the
    network has at most --exact-max-parameters weights. --theory-eta 0 means the
    step size of Zhou et al.'s Theorem 4.5, 1 / (T m L + m lambda).

    The quick preset is the issue's quick data, scikit-learn's digits (10 arms,
    640 disjoint inputs), wine (3 arms) and breast_cancer (2 arms), at widths 16,
    64, 128, 3 seeds and every agent: 432 runs of 240 rounds, retraining every
    80, gamma grid 0.1, 1: 4m52s on 2 CPU cores shared with other work (load
    average 1.3-2). That is a smaller sweep than 300 rounds retraining every 100
    with the grid 0.01, 0.1, 1 (513 runs; 0.01 was the best constant in 2 of 20
    cells), which took 4m51s at a similar load and 5m31s with 240 rounds while
    another job kept one core busy.
    Most of the time goes to the digits bandit's diagonal and K-FAC Laplace
    agents, whose exact conditioning costs 2 n' A P float64 operations a round
    (n' rounds held since the retraining, P = 82,177 at width 128). Fashion-MNIST
    is not in it even where its files are present: as a 10-armed bandit it costs
    at least what digits costs (784 pixels, or 49 with --image-pool 4), which
    would double the time; add it with
    --datasets digits,wine,breast_cancer,fashion_mnist --image-pool 4.
    """

    AXES: typing.ClassVar = ("datasets", "widths", "seeds", "agents", "gamma_grid")
    datasets: tuple[str, ...] = ("digits", "wine", "breast_cancer")
    widths: tuple[int, ...] = (16, 64, 128)
    seeds: tuple[int, ...] = (0, 1, 2)
    agents: tuple[str, ...] = AGENTS
    gamma_grid: tuple[float, ...] = (0.1, 1.0)
    depth: int = 1
    encoding: str = "disjoint"
    rounds: int = 240
    retrain_every: int = 80
    train_steps: int = 50
    learning_rate: float = 1e-2
    optimizer: str = "adam"
    lam: float = 0.1
    reward_noise: float = 0.0
    normalization: str = "fan_in"
    parametrization: str = "standard"
    activation: str = "relu"
    w_std: float = math.sqrt(2.0)
    b_std: float = 0.1
    theory_nu: float = 1.0
    theory_delta: float = 0.1
    theory_norm_bound: float = 1.0
    theory_c1: float = 1.0
    theory_c2: float = 1.0
    theory_c3: float = 1.0
    theory_eta: float = 0.0
    laplace_beta: float = 1.0
    prior_precision: float = 1.0
    noise_variance: float = 0.25
    evidence_steps: int = 3
    evidence_learning_rate: float = 0.5
    exact_max_parameters: int = 1500
    data_dir: str = ""
    image_pool: int = 1
    curve_points: int = 100


PAPER = dict(
    datasets=("covertype", "shuttle", "magic", "mushroom", "adult", "mnist"),
    widths=(32, 128, 512, 2048),
    seeds=(0, 1, 2, 3, 4),
    gamma_grid=(0.01, 0.1, 1.0, 10.0),
    rounds=10000,
    retrain_every=100,
    train_steps=100,
    evidence_steps=20,
    evidence_learning_rate=0.1,
    exact_max_parameters=20000,
    curve_points=200,
)
