"""Bandit agents: a reward network, an exploration rule, and their compiled rounds.

Every agent scores all arms of a round in one batched pass (f and, where the
rule needs them, the per-example gradients g (A, P) from `network.factors`),
plays the argmax, and updates its exploration state by the played arm only:

  Greedy        f(u_a).
  NeuralUCB     f(u_a) + gamma sqrt(phi_a^T Z^-1 phi_a), phi = g / sqrt(m),
                Z = lambda I + sum of the played phi phi^T (Zhou et al. 2020).
  NeuralTS      a draw from N(f(u_a), nu^2 lambda phi_a^T Z^-1 phi_a), independently
                per arm (Zhang et al. 2021).
                For both, Z^-1 "diag" or "exact" (`gram`), and gamma / nu either the
                NTK-theory expressions (`theory`) or a constant.
  LaplaceUCB    mean(u_a) + beta std(u_a) of the linearized Laplace posterior (`posterior`).
  LaplaceTS     one joint draw over the A arms from that posterior (Thompson sampling
                of the linearized network's weights, seen through the arms).

Every `retrain_every` rounds the agent retrains its network (`training`):
NeuralUCB / NeuralTS / Greedy on 1/2 sum (f - r)^2 + m lambda / 2 ||theta - theta_0||^2,
the Laplace agents on the MAP objective of their current prior and noise
(s^2 delta / 2 ||theta||^2); the Laplace agents then tune delta and s^2 by the
evidence and rebuild their posterior. The exploration rules are frozen
dataclasses (hashable): the compiled functions are cached per (rule, network
shapes), so runs of the same shapes share one trace.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import dataclasses
import functools

import numpy as np
import tensorflow as tf

from keras_ntk import traced
from keras_ntk.bandits import environment, gram, network, posterior, theory, training

F64 = tf.float64


class _AnchoredToInit:
    """Retrained on 1/2 sum (f - r)^2 + m lambda / 2 ||theta - theta_0||^2 (Zhou et al. 2020)."""

    def regularization(self, agent):
        return agent.initial_weights, agent.parameter_decay(agent.lam * agent.width)

    def after_training(self, agent):
        return {}


@dataclasses.dataclass(frozen=True)
class Greedy(_AnchoredToInit):
    """Play argmax_a f(u_a): no exploration beyond the network's initialization."""

    name = "greedy"

    def initial_state(self, agent):
        return {}

    def score(self, spec, weights, state, arms, t, seed):
        return tf.cast(network.forward(spec, weights, arms), F64), {}

    def update(self, spec, weights, state, arms, cache, action, reward, t):
        pass


@dataclasses.dataclass(frozen=True)
class NeuralUCB(_AnchoredToInit):
    """NeuralUCB with Z^-1 `inverse` ("diag" | "exact") and gamma from `constants`
    (the NTK theory, `theory.neural_ucb_gamma`) or, when constants is None, the
    agent's constant `exploration`."""

    inverse: str = "diag"
    constants: theory.TheoryConstants | None = None

    @property
    def name(self):
        return f"neural_ucb_{self.inverse}"

    def initial_state(self, agent):
        state = gram.initial_state(self.inverse, agent.parameters, agent.lam)
        state["exploration"] = tf.Variable(tf.constant(agent.exploration, F64), trainable=False)
        return state

    def _phi(self, spec, weights, arms):
        f, g = network.gradients(spec, weights, arms)
        width = tf.cast(tf.shape(weights[0])[1], tf.float32)
        return f, g / tf.sqrt(width)

    def scale(self, state, t):
        """gamma_{t} after t rounds (theory), else the constant."""
        if self.constants is None:
            return state["exploration"]
        return theory.neural_ucb_gamma(self.constants, t, state["log_det_ratio"])

    def score(self, spec, weights, state, arms, t, seed):
        f, phi = self._phi(spec, weights, arms)
        bonus = tf.sqrt(gram.quadratic_form(state, phi))
        return tf.cast(f, F64) + self.scale(state, t) * bonus, {"phi": phi, "bonus": bonus}

    def update(self, spec, weights, state, arms, cache, action, reward, t):
        gram.update(state, cache["phi"][action])


@dataclasses.dataclass(frozen=True)
class NeuralTS(NeuralUCB):
    """NeuralTS with Z^-1 `inverse` and nu from `constants` (`theory.neural_ts_nu`)
    or, when constants is None, the agent's constant `exploration`."""

    @property
    def name(self):
        return f"neural_ts_{self.inverse}"

    def scale(self, state, t):
        """nu_t (theory), else the constant."""
        if self.constants is None:
            return state["exploration"]
        return theory.neural_ts_nu(self.constants, state["log_det_ratio"])

    def score(self, spec, weights, state, arms, t, seed):
        f, phi = self._phi(spec, weights, arms)
        std = tf.sqrt(state["lam"] * gram.quadratic_form(state, phi))
        noise = tf.random.stateless_normal(tf.shape(f), tf.stack([seed, t]), dtype=F64)
        return tf.cast(f, F64) + self.scale(state, t) * std * noise, {"phi": phi, "bonus": std}

    def initial_state(self, agent):
        state = super().initial_state(agent)
        state["lam"] = tf.Variable(tf.constant(agent.lam, F64), trainable=False)
        return state


@dataclasses.dataclass(frozen=True)
class LaplaceUCB:
    """UCB on the linearized Laplace posterior of `structure`: mean + beta std,
    beta the agent's `exploration`."""

    structure: str = "kron"

    @property
    def name(self):
        return f"laplace_ucb_{self.structure}"

    def initial_state(self, agent):
        state = posterior.initial_state(self.structure, agent.weights, agent.retrain_every,
                                        agent.prior_precision, agent.noise_variance)
        state["exploration"] = tf.Variable(tf.constant(agent.exploration, F64), trainable=False)
        return state

    def score(self, spec, weights, state, arms, t, seed):
        f, w = posterior.features(self.structure, spec, weights, state, arms)
        terms = posterior.conditioning_terms(state, w)
        mean, variance = posterior.predictive_variance(state, f, w, terms)
        std = tf.sqrt(variance)
        return mean + state["exploration"] * std, {"f": f, "w": w, "v": terms[0], "bonus": std}

    def update(self, spec, weights, state, arms, cache, action, reward, t):
        posterior.condition(state, cache["w"][action], tf.cast(reward - cache["f"][action], F64),
                            cache["v"][:, action])

    def regularization(self, agent):
        zeros = [tf.zeros_like(w) for w in agent.weights]
        return zeros, agent.parameter_decay(agent.noise_variance * agent.prior_precision)

    def after_training(self, agent):
        tuned, spectra = posterior.evidence(
            self.structure, agent.spec, agent.weights, tf.convert_to_tensor(agent.history["inputs"]),
            tf.convert_to_tensor(agent.history["rewards"]), agent.rounds_played, agent.prior_precision,
            agent.noise_variance, agent.evidence_steps, agent.evidence_learning_rate)
        agent.prior_precision, agent.noise_variance = tuned["prior_precision"], tuned["noise_variance"]
        refitted = posterior.refit(self.structure, agent.state, spectra, agent.prior_precision, agent.noise_variance)
        return {**tuned, **refitted}


@dataclasses.dataclass(frozen=True)
class LaplaceTS(LaplaceUCB):
    """Thompson sampling on the linearized Laplace posterior of `structure`: one
    draw of the arms' linearized rewards from their joint Gaussian."""

    @property
    def name(self):
        return f"laplace_ts_{self.structure}"

    def score(self, spec, weights, state, arms, t, seed):
        f, w = posterior.features(self.structure, spec, weights, state, arms)
        terms = posterior.conditioning_terms(state, w)
        mean, cov = posterior.predictive(state, f, w, terms)
        eigenvalues, eigenvectors = tf.linalg.eigh(0.5 * (cov + tf.transpose(cov)))
        noise = tf.random.stateless_normal(tf.shape(mean), tf.stack([seed, t]), dtype=F64)
        draw = mean + tf.linalg.matvec(eigenvectors, tf.sqrt(tf.maximum(eigenvalues, 0.0)) * noise)
        return draw, {"f": f, "w": w, "v": terms[0], "bonus": tf.sqrt(tf.maximum(tf.linalg.diag_part(cov), 0.0))}


RULES = {
    "greedy": lambda constants: Greedy(),
    "neural_ucb_diag": lambda constants: NeuralUCB("diag", constants),
    "neural_ucb_exact": lambda constants: NeuralUCB("exact", constants),
    "neural_ts_diag": lambda constants: NeuralTS("diag", constants),
    "neural_ts_exact": lambda constants: NeuralTS("exact", constants),
    **{f"laplace_ucb_{s}": functools.partial(lambda s, constants: LaplaceUCB(s), s) for s in posterior.STRUCTURES},
    **{f"laplace_ts_{s}": functools.partial(lambda s, constants: LaplaceTS(s), s) for s in posterior.STRUCTURES},
}
NEURAL = tuple(name for name in RULES if name.startswith("neural_"))
LAPLACE = tuple(name for name in RULES if name.startswith("laplace_"))


def _round(rule, spec, weights, state, history, arms, rewards, t, seed):
    """One round: score the arms (A, input_dim), play the argmax, update, record."""
    scores, cache = rule.score(spec, weights, state, arms, t, seed)
    action = tf.argmax(scores, output_type=tf.int32)
    reward = rewards[action]
    rule.update(spec, weights, state, arms, cache, action, reward, t)
    history["inputs"].scatter_nd_update([[t]], arms[action][None])
    history["rewards"].scatter_nd_update([[t]], reward[None])
    return action


@functools.lru_cache(maxsize=None)
def _compiled(rule, spec, shapes):
    """(play, score, update) of a rule for networks of `spec` with weights of `shapes`, as tf.functions."""

    def play(weights, state, history, contexts, rewards, first, seed):
        actions = tf.TensorArray(tf.int32, size=tf.shape(contexts)[0])
        for i in tf.range(tf.shape(contexts)[0]):
            arms = environment.encode(spec.encoding, contexts[i][None], spec.arms)[0]
            actions = actions.write(i, _round(rule, spec, weights, state, history, arms, rewards[i], first + i, seed))
        return actions.stack()

    def score(weights, state, arms, t, seed):
        return rule.score(spec, weights, state, arms, t, seed)

    def update(weights, state, arms, cache, action, reward, t):
        rule.update(spec, weights, state, arms, cache, action, reward, t)

    # The Laplace agents' cache holds the (rounds held, A) conditioning terms, whose
    # length grows round by round: score and update relax that length. Only that:
    # `shapes` keys the functions on the weights' shapes, because a trace relaxed
    # over variables of other shapes keeps the static shapes of the first ones.
    return (traced.per_object(play), traced.per_object(score, reduce_retracing=True),
            traced.per_object(update, reduce_retracing=True))


class Agent:
    """One agent on one bandit: network, exploration rule and history.

    Args:
      rule: an exploration rule (`Greedy`, `NeuralUCB`, `NeuralTS`, `LaplaceUCB`,
        `LaplaceTS`; RULES[name](constants) builds one by name); NeuralUCB / NeuralTS
        built with `theory.TheoryConstants` use the theory's gamma_t / nu_t.
      model, spec: the reward network (`network.build_model`).
      rounds: T, the history's capacity.
      retrain_every: k; the Laplace posterior holds up to k conditioned rounds.
      steps, learning_rate, optimizer: the retraining (`training.train`).
      lam: lambda, NeuralUCB's regularization and Z_0 = lambda I (also the greedy
        agent's penalty m lambda).
      exploration: the constant gamma (UCB), nu (TS) or beta (Laplace UCB).
      prior_precision, noise_variance: the Laplace agents' starting delta and s^2.
      evidence_steps, evidence_learning_rate: Adam steps on the Laplace evidence at
        each retraining (`posterior.evidence`, the steps of `Laplace.optimize_hyperparameters`).
      exact_max_parameters: the largest P for which Z^-1 may be kept exactly.
      seed: of the Thompson draws.
    """

    def __init__(self, rule, model, spec, rounds, retrain_every, *, steps=50, learning_rate=1e-2,
                 optimizer="adam", lam=1.0, exploration=1.0, prior_precision=1.0, noise_variance=0.25,
                 evidence_steps=20, evidence_learning_rate=0.1, exact_max_parameters=4096,
                 seed=0):
        self.model, self.spec = model, spec
        self.weights = network.weights_of(model)
        self.parameters = network.parameter_count(model)
        self.width = int(self.weights[0].shape[1])
        self.rule = rule
        if getattr(rule, "inverse", None) == "exact" and self.parameters > exact_max_parameters:
            raise ValueError(
                f"{rule.name} keeps Z^-1 as a dense {self.parameters} x {self.parameters} matrix "
                f"({8 * self.parameters**2 / 2**30:.2f} GiB); exact_max_parameters is {exact_max_parameters}. "
                "Use the diagonal inverse, a smaller network, or raise exact_max_parameters."
            )
        if isinstance(retrain_every, bool) or not isinstance(retrain_every, int) or retrain_every < 1:
            raise ValueError(f"retrain_every must be a positive int, got {retrain_every!r}.")
        for value, what in ((lam, "lam"), (prior_precision, "prior_precision"), (noise_variance, "noise_variance")):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{what} must be positive and finite, got {value!r}.")
        self.rounds, self.retrain_every = rounds, retrain_every
        self.steps, self.learning_rate, self.optimizer = steps, learning_rate, optimizer
        self.lam, self.exploration = float(lam), float(exploration)
        self.prior_precision, self.noise_variance = float(prior_precision), float(noise_variance)
        self.evidence_steps, self.evidence_learning_rate = evidence_steps, evidence_learning_rate
        self.seed = int(seed)
        self.initial_weights = [tf.constant(w.numpy()) for w in self.weights]
        self.history = {
            "inputs": tf.Variable(tf.zeros((rounds, spec.input_dim)), trainable=False),
            "rewards": tf.Variable(tf.zeros(rounds), trainable=False),
        }
        self.rounds_played = 0
        self.state = rule.initial_state(self)
        self._play, self._score, self._update = _compiled(rule, spec, tuple(tuple(w.shape) for w in self.weights))
        self._pending = None

    @property
    def name(self):
        return self.rule.name

    def parameter_decay(self, value):
        """(L,) float32: the same penalty for every layer."""
        return tf.fill([len(self.weights) // 2], tf.cast(value, tf.float32))

    def _check_room(self, rounds):
        if self.rounds_played + rounds > self.rounds:
            raise ValueError(f"The agent has room for {self.rounds} rounds; {self.rounds_played} played, "
                             f"{rounds} more requested.")

    def play(self, contexts, rewards):
        """Play the next rounds in one compiled loop.

        Args:
          contexts: (k, d) float32; rewards: (k, A) float32, the reward each arm
            would pay (only the played arm's is used).
        Returns:
          actions (k,) int.
        """
        contexts = np.asarray(contexts, np.float32)
        rewards = np.asarray(rewards, np.float32)
        if contexts.ndim != 2 or rewards.shape != (len(contexts), self.spec.arms):
            raise ValueError(f"contexts must be (k, d) and rewards (k, {self.spec.arms}), "
                             f"got {contexts.shape} and {rewards.shape}.")
        self._check_room(len(contexts))
        actions = self._play(self.weights, self.state, self.history, contexts, rewards,
                             tf.constant(self.rounds_played, tf.int32), tf.constant(self.seed, tf.int32))
        self.rounds_played += len(contexts)
        return actions.numpy()

    def scores(self, arms):
        """Scores (A,) float64 and exploration terms of the next round's arm inputs
        (A, input_dim), without playing: the same function `play` calls.

        The returned dict holds "bonus" (A,): the UCB bonus sqrt(phi^T Z^-1 phi)
        (NeuralUCB), the TS standard deviation sqrt(lambda phi^T Z^-1 phi)
        (NeuralTS), or the posterior std (Laplace).
        """
        self._check_room(1)
        arms = tf.convert_to_tensor(arms, tf.float32)
        scores, cache = self._score(self.weights, self.state, arms, tf.constant(self.rounds_played, tf.int32),
                                    tf.constant(self.seed, tf.int32))
        self._pending = (arms, cache)
        return scores.numpy(), {k: v.numpy() for k, v in cache.items() if k == "bonus"}

    def observe(self, action, reward):
        """Play `action` on the arms last passed to `scores` and record its reward."""
        if self._pending is None:
            raise ValueError("Call scores(arms) before observe(action, reward).")
        arms, cache = self._pending
        t = tf.constant(self.rounds_played, tf.int32)
        self._update(self.weights, self.state, arms, cache, tf.constant(action, tf.int32),
                     tf.constant(reward, tf.float32), t)
        self.history["inputs"].scatter_nd_update([[self.rounds_played]], arms[action][None])
        self.history["rewards"].scatter_nd_update([[self.rounds_played]], [reward])
        self.rounds_played += 1
        self._pending = None

    def retrain(self):
        """Retrain on all rounds so far; returns a log dict (round, loss, and the
        Laplace agents' tuned hyperparameters and jitter)."""
        anchors, decay = self.rule.regularization(self)
        loss = training.train(self.spec, self.weights, anchors, decay, tf.convert_to_tensor(self.history["inputs"]),
                              tf.convert_to_tensor(self.history["rewards"]), self.rounds_played, steps=self.steps,
                              learning_rate=self.learning_rate, optimizer=self.optimizer)
        return {"round": self.rounds_played, "loss": loss, **self.rule.after_training(self)}
