"""Contextual bandits built from classification data: one arm per class.

Round t shows a context x_t (d,) drawn from the data (a fresh random permutation
of the examples each pass, so every example appears once per pass); arm a pays
r_t(a) = 1[a = y_t] + noise_std * eps_t(a), eps ~ N(0, 1) i.i.d. The expected
reward of arm a is 1[a = y_t], so the optimal arm is the true class and the
regret of playing a_t is exactly 1 - 1[a_t = y_t]: cumulative regret is the
number of misclassified rounds, with no estimate involved.

The agent sees each arm through an arm input u_t(a):
  "disjoint"  u = e_a (x) x, the context in arm a's block of an A d vector, zeros
              elsewhere (Zhou et al. 2020, NeuralUCB);
  "arm_head"  u = [x, e_a] (d + A), for a network with one output per arm whose
              a-th output is the arm's reward (`keras_ntk.bandits.network`).
Contexts, rewards and noise depend only on the seed, so agents run with the same
seed see the same rounds (common random numbers).
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import numpy as np
import tensorflow as tf

from keras_ntk.bandits import network

NORMALIZATIONS = ("fan_in", "unit", "none")


def encode(encoding, contexts, arms):
    """Arm inputs of contexts (n, d): (n, A, A d) disjoint or (n, A, d + A) arm_head.

    Works on numpy arrays and (inside tf.function) on tensors.
    """
    contexts = tf.convert_to_tensor(contexts, tf.float32)
    n, d = tf.shape(contexts)[0], contexts.shape[-1]
    eye = tf.eye(arms, dtype=tf.float32)
    if encoding == "disjoint":
        blocks = eye[None, :, :, None] * contexts[:, None, None, :]  # (n, A, A, d)
        return tf.reshape(blocks, (n, arms, arms * d))
    if encoding == "arm_head":
        tiled = tf.broadcast_to(contexts[:, None, :], (n, arms, d))
        return tf.concat([tiled, tf.broadcast_to(eye[None], (n, arms, arms))], axis=-1)
    raise ValueError(f"encoding must be one of {network.ENCODINGS}, got {encoding!r}.")


class ClassificationBandit:
    """A contextual bandit over T rounds of a labelled dataset.

    Args:
      x: (N, d) features; y: (N,) integer labels 0..A-1 (A = the number of arms,
        max label + 1; every class should occur).
      rounds: T.
      encoding: "disjoint" or "arm_head" (module docstring).
      noise_std: standard deviation of the Gaussian reward noise (0: rewards 0/1).
      normalization: "fan_in" (the default) scales each context to ||x||^2 = the
        fan-in of the network's first layer (A d disjoint, d arm_head), so that its
        pre-activations have the variance w_std^2 of standardized inputs at
        initialization; "unit" to ||x|| = 1 (the assumption of Zhou et al. 2020,
        whose first layer has weights of variance 4/m instead); "none" keeps x.
      seed: the order of the contexts and the noise.
    Attributes:
      contexts (T, d) float32, labels (T,) int64, expected_rewards (T, A)
      float32, rewards (T, A) float32 (what the agent observes for the arm it plays).
    """

    def __init__(self, x, y, rounds, encoding="disjoint", noise_std=0.0, normalization="fan_in", seed=0):
        x = np.asarray(x, np.float32)
        y = np.asarray(y)
        if x.ndim != 2 or y.shape != (len(x),):
            raise ValueError(f"x must be (N, d) and y (N,), got {x.shape} and {y.shape}.")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError(f"y must be integer class labels 0..A-1, got {y.dtype} in [{y.min()}, {y.max()}].")
        if not np.all(np.isfinite(x)):
            raise ValueError("x contains NaN or Inf.")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive int, got {rounds!r}.")
        if encoding not in network.ENCODINGS:
            raise ValueError(f"encoding must be one of {network.ENCODINGS}, got {encoding!r}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        if not (np.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a non-negative number, got {noise_std!r}.")
        self.arms = int(y.max()) + 1
        if self.arms < 2:
            raise ValueError("The labels hold a single class; a bandit needs at least 2 arms.")
        self.encoding, self.rounds, self.noise_std = encoding, rounds, float(noise_std)
        rng = np.random.default_rng(seed)
        passes = -(-rounds // len(x))
        order = np.concatenate([rng.permutation(len(x)) for _ in range(passes)])[:rounds]
        contexts = x[order]
        if normalization != "none":
            fan_in = self.arms * x.shape[1] if encoding == "disjoint" else x.shape[1]
            target = np.sqrt(fan_in) if normalization == "fan_in" else 1.0
            norms = np.linalg.norm(contexts, axis=1, keepdims=True)
            contexts = contexts * (target / np.where(norms > 0, norms, 1.0))
        self.contexts = contexts.astype(np.float32)
        self.labels = y[order].astype(np.int64)
        self.expected_rewards = np.eye(self.arms, dtype=np.float32)[self.labels]
        noise = rng.standard_normal((rounds, self.arms)).astype(np.float32)
        self.rewards = self.expected_rewards + np.float32(self.noise_std) * noise

    @property
    def context_dim(self):
        return self.contexts.shape[1]

    def arm_inputs(self, start, stop):
        """Arm inputs of rounds start..stop-1: (stop - start, A, input_dim) float32."""
        return encode(self.encoding, self.contexts[start:stop], self.arms).numpy()

    def regret(self, actions):
        """Per-round regret (T',) of the actions (T',) played in rounds 0..T'-1:
        max_a E r_t(a) - E r_t(a_t)."""
        actions = np.asarray(actions)
        if actions.ndim != 1 or len(actions) > self.rounds:
            raise ValueError(f"actions must be (T',) with T' <= {self.rounds}, got shape {actions.shape}.")
        if actions.size and (actions.min() < 0 or actions.max() >= self.arms):
            raise ValueError(f"actions must be arms in 0..{self.arms - 1}, got {actions.min()}..{actions.max()}.")
        expected = self.expected_rewards[: len(actions)]
        return expected.max(axis=1) - expected[np.arange(len(actions)), actions]

    def cumulative_regret(self, actions):
        """Cumulative regret after each round, (T',)."""
        return np.cumsum(self.regret(actions))
