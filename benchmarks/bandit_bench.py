"""Bandit agents' speed: rounds per second and where a round's time goes.

For every agent on one dataset at one width (default digits, width 512, the
disjoint encoding of NeuralUCB): after a warm-up agent has traced every compiled
function, a fresh agent plays `--rounds` rounds one call at a time, timing

  scoring     the batched pass over all arms (f, gradients, bonus or posterior),
  update      the rank-one update of Z^-1 / the posterior by the played arm,
  retraining  the network's training steps and (Laplace) the evidence and refit,

and another fresh agent plays the same rounds in the compiled chunks `keras-ntk run
E3` uses (rounds per second of that loop, retraining included). Rounds per second
are printed per wall and per CPU second (on a shared machine quote the CPU figures);
the shares are of the per-call run's CPU time.

    .venv/bin/python benchmarks/bandit_bench.py [--dataset digits] [--width 512] [--rounds 200]
"""

import argparse
import time

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import numpy as np

from keras_ntk import bandits
from keras_ntk.bandits import agents as agents_lib


class Clock:
    """Accumulated wall and CPU seconds of the timed blocks."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def make_agent(name, bandit, args):
    model, spec = bandits.network.build_model("disjoint", bandit.context_dim, bandit.arms, args.width, 1, seed=0)
    return bandits.Agent(agents_lib.RULES[name](None), model, spec, bandit.rounds, args.retrain_every,
                         steps=args.steps, lam=0.1, exploration=1.0, evidence_steps=5, evidence_learning_rate=0.3,
                         exact_max_parameters=args.exact_max_parameters)


def per_round(agent, bandit, rounds, clocks):
    for t in range(rounds):
        arms = bandit.arm_inputs(t, t + 1)[0]
        with clocks["scoring"]:
            scores, _ = agent.scores(arms)
        action = int(np.argmax(scores))
        with clocks["update"]:
            agent.observe(action, float(bandit.rewards[t, action]))
        if (t + 1) % agent.retrain_every == 0 and t + 1 < rounds:
            with clocks["retraining"]:
                agent.retrain()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--retrain-every", type=int, default=50)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--exact-max-parameters", type=int, default=1500)
    parser.add_argument("--agents", default=",".join(agents_lib.RULES))
    args = parser.parse_args()
    x, y = bandits.datasets.load(args.dataset)
    bandit = bandits.ClassificationBandit(x, y, args.rounds, seed=0)
    print(f"{args.dataset}: {bandit.arms} arms, width {args.width}, {args.rounds} rounds, retraining every "
          f"{args.retrain_every} rounds ({args.steps} steps)")
    header = (f"{'agent':24s} {'P':>8s} {'rounds/s loop: wall, CPU':>25s} {'rounds/s calls: wall, CPU':>26s} "
              f"{'scoring':>8s} {'update':>7s} {'retrain':>8s}  (shares of the calls' CPU time)")
    print(header)
    for name in args.agents.split(","):
        try:
            warm = make_agent(name, bandit, args)
        except ValueError as error:
            print(f"{name:24s} skipped: {error}")
            continue
        per_round(warm, bandit, 2 * args.retrain_every, {k: Clock() for k in ("scoring", "update", "retraining")})
        bandits.simulation.run(bandits.ClassificationBandit(x, y, 2 * args.retrain_every, seed=1),
                               make_agent(name, bandit, args))
        clocks = {k: Clock() for k in ("scoring", "update", "retraining")}
        per_round(make_agent(name, bandit, args), bandit, args.rounds, clocks)
        loop = Clock()
        with loop:
            bandits.simulation.run(bandit, make_agent(name, bandit, args))
        wall = sum(c.wall for c in clocks.values())
        cpu = sum(c.cpu for c in clocks.values())
        shares = [100 * clocks[k].cpu / cpu for k in ("scoring", "update", "retraining")]
        print(f"{name:24s} {warm.parameters:8d} {args.rounds / loop.wall:14.1f}, {args.rounds / loop.cpu:8.1f} "
              f"{args.rounds / wall:15.1f}, {args.rounds / cpu:8.1f} "
              f"{shares[0]:7.1f}% {shares[1]:6.1f}% {shares[2]:7.1f}%", flush=True)

if __name__ == "__main__":
    main()
