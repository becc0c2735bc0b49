"""Neural contextual bandits: classification bandits, NeuralUCB / NeuralTS, Laplace UCB / TS.

One module per concern:
  environment  ClassificationBandit (one arm per class, exact regret) and the arm encodings
  datasets     the bundled, image and UCI datasets as (x, y)
  network      the reward network and its per-example gradients as pure functions
  training     retraining: a fixed number of full-batch steps on all rounds so far
  theory       the NTK-theory exploration scales (NeuralUCB gamma_t, NeuralTS nu_t)
  gram         NeuralUCB's Z^-1, diagonal or exact by Sherman-Morrison
  posterior    the linearized Laplace posterior, evidence-tuned, conditioned round by round
  agents       the agents (exploration rules) and their compiled rounds
  simulation   run an agent on a bandit

Example:
    x, y = datasets.load("wine")
    bandit = environment.ClassificationBandit(x, y, rounds=300, seed=0)
    model, spec = network.build_model("disjoint", bandit.context_dim, bandit.arms, 64, 1, seed=0)
    agent = agents.Agent(agents.LaplaceTS("kron"), model, spec, 300, retrain_every=50)
    result = simulation.run(bandit, agent)      # result["regret"].cumsum(): cumulative regret
"""

from keras_ntk.bandits import agents, datasets, environment, gram, network, posterior, simulation, theory, training
from keras_ntk.bandits.agents import RULES, Agent, Greedy, LaplaceTS, LaplaceUCB, NeuralTS, NeuralUCB
from keras_ntk.bandits.environment import ClassificationBandit
from keras_ntk.bandits.theory import TheoryConstants

__all__ = [
    "RULES",
    "Agent",
    "ClassificationBandit",
    "Greedy",
    "LaplaceTS",
    "LaplaceUCB",
    "NeuralTS",
    "NeuralUCB",
    "TheoryConstants",
    "agents",
    "datasets",
    "environment",
    "gram",
    "network",
    "posterior",
    "simulation",
    "theory",
    "training",
]
