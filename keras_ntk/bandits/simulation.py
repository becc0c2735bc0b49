"""Run an agent on a bandit: rounds in compiled chunks of `retrain_every`, retraining between them."""

import time

import numpy as np


def run(bandit, agent, progress=None):
    """Play all T rounds of `bandit` with `agent`, retraining after every chunk but the last.

    Args:
      bandit: a `ClassificationBandit` (its T must fit the agent's history).
      agent: an `Agent` that has played no round yet.
      progress: optional callable(rounds done, T) called after each chunk.
    Returns:
      dict with "actions" (T,) int, "regret" (T,) float (exact, from the expected
      rewards), "retrainings" (one log per retraining: round, loss, and the Laplace
      agents' prior precision, noise variance, evidence, jitter), and "seconds"
      spent playing (scoring and posterior updates) and retraining.
    """
    if agent.rounds_played:
        raise ValueError(f"The agent has already played {agent.rounds_played} rounds; run needs a fresh agent.")
    if bandit.rounds > agent.rounds or bandit.arms != agent.spec.arms:
        raise ValueError(f"The bandit has {bandit.rounds} rounds and {bandit.arms} arms; the agent holds "
                         f"{agent.rounds} rounds of a network with {agent.spec.arms} arms.")
    actions = np.empty(bandit.rounds, np.int64)
    retrainings, seconds = [], {"play": 0.0, "retrain": 0.0}
    for start in range(0, bandit.rounds, agent.retrain_every):
        stop = min(start + agent.retrain_every, bandit.rounds)
        begin = time.perf_counter()
        actions[start:stop] = agent.play(bandit.contexts[start:stop], bandit.rewards[start:stop])
        seconds["play"] += time.perf_counter() - begin
        if stop < bandit.rounds:
            begin = time.perf_counter()
            retrainings.append(agent.retrain())
            seconds["retrain"] += time.perf_counter() - begin
        if progress is not None:
            progress(stop, bandit.rounds)
    return {"actions": actions, "regret": bandit.regret(actions), "retrainings": retrainings, "seconds": seconds}
