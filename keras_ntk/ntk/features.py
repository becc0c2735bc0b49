"""Per-example NTK factors: the Jacobian path and the structured path.

The NTK is a sum over parameter groups (a layer's kernel and bias, or the
variables of a layer without a rule). Each group yields per-example factors:

  "factored"  (A (n, C), D (n, K, O)):  Theta_g = (wc <A_i, A_j> + bc) <D_ik, D_jl>,
              a dense layer on (batch, features) inputs, wc = weight_scale^2,
              bc = bias_scale^2 (0 for a frozen part);
  "gradient"  (G (n, K, P)):            Theta_g = <G_ik, G_jl>,
              per-example gradients df_k/dtheta_g, formed structurally from
              patches and deltas (convolutions) or by autodiff (the Jacobian path).

The deltas of rule layers come from the explicit backward recursion of
chain.py when the rule layers are a chain of dense layers ending at the output,
else from the probed pass of rules.py (K vectorized backward passes).
"""

import collections
import dataclasses
import math

import tensorflow as tf

from keras_ntk.ntk import chain as chain_lib
from keras_ntk.ntk import rules as rules_lib


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    kind: str  # "factored" | "gradient"
    weight_coef: float = 0.0
    bias_coef: float = 0.0


def _owner(variable):
    return variable.path.rsplit("/", 1)[0]


def per_example_jacobians(model, variables, x):
    """Per-example Jacobians, list of (n, K, size(v)) for each variable v.

    Vectorized over examples with tf.vectorized_map; call inside tf.function.
    """

    def one(xi):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([v.value for v in variables])
            f = rules_lib.flat_outputs(model, xi[None])[0]
        jac = tape.jacobian(
            f, [v.value for v in variables], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return [tf.reshape(j, (tf.shape(f)[0], -1)) for j in jac]

    return tf.vectorized_map(one, x)


class FeatureMap:
    """Maps a batch x (n, ...) to the per-example factors of every parameter group.

    Args:
      model: a built Keras model with one output tensor.
      method: "structured" (rules where they exist, Jacobians for the rest) or
        "jacobian" (Jacobians for all trainable variables).
      example: one input example with its batch axis, (1, ...), used to find
        which rule layers the forward pass calls exactly once.
    Attributes:
      groups: the `Group`s, in the order of the factors returned by `__call__`.
      num_outputs: K.
    """

    def __init__(self, model, method, example):
        self.model = model
        trainable = list(model.trainable_variables)
        if not trainable:
            raise ValueError(f"Model {model.name!r} has no trainable variables: its NTK is zero.")
        rules = rules_lib.find_rules(model) if method == "structured" else []
        calls, self._positions, self.num_outputs = rules_lib.trace_calls(model, rules, example)
        self._rules = [r for r in rules if calls[r.name] == 1]
        self._chain = chain_lib.find(model, self._rules, example)
        if self._chain is not None:
            self._rules = self._chain
        unused = {id(v) for r in rules if calls[r.name] == 0 for v in r.variables}
        ruled = {id(v) for r in self._rules for v in r.variables}
        self._jacobian_variables = [
            v for v in trainable if id(v) not in ruled and id(v) not in unused
        ]
        self._jacobian_groups = collections.OrderedDict()
        for v in self._jacobian_variables:
            self._jacobian_groups.setdefault(_owner(v), []).append(v)
        self.groups = [self._rule_group(r) for r in self._rules] + [
            Group(name, "gradient") for name in self._jacobian_groups
        ]
        self._compiled = tf.function(lambda x: self.factors(x), reduce_retracing=True)

    def _rule_group(self, rule):
        if self._positions[rule.name] == 1:
            return Group(
                rule.name,
                "factored",
                rule.weight_scale**2 if rule.use_kernel else 0.0,
                rule.bias_scale**2 if rule.use_bias else 0.0,
            )
        return Group(rule.name, "gradient")

    def factors(self, x):
        """Factors for x (n, ...), traced into the calling tf.function: see `__call__`."""
        factors = []
        if self._chain is not None:
            factors += [(a, delta) for _, a, delta in chain_lib.probe_chain(self.model, self._chain, x)]
        elif self._rules:
            _, probes = rules_lib.probe_layers(self.model, self._rules, x)
            factors += [self._rule_factors(*probe) for probe in probes]
        if self._jacobian_variables:
            jacobians = per_example_jacobians(self.model, self._jacobian_variables, x)
            by_variable = {id(v): j for v, j in zip(self._jacobian_variables, jacobians)}
            for variables in self._jacobian_groups.values():
                factors.append((tf.concat([by_variable[id(v)] for v in variables], axis=-1),))
        return factors

    @staticmethod
    def _rule_factors(rule, patches, delta):
        """Factors of one rule layer from patches (n, P, C) and delta (n, K, P, O)."""
        if patches.shape[1] == 1:
            return patches[:, 0, :], delta[:, :, 0, :]
        n, k = tf.shape(delta)[0], tf.shape(delta)[1]
        grads = []
        if rule.use_kernel:
            g = tf.einsum("npc,nkpo->nkco", patches, delta) * rule.weight_scale
            grads.append(tf.reshape(g, (n, k, -1)))
        if rule.use_bias:
            grads.append(tf.reduce_sum(delta, axis=2) * rule.bias_scale)
        return (tf.concat(grads, axis=-1),)

    def __call__(self, x):
        """Factors for x (n, ...): a list aligned with `groups`, tuples of tensors."""
        return self._compiled(x)

    def bytes_per_example(self, itemsize=4):
        """(factor bytes, working bytes) per example.

        Working bytes are a conservative estimate of what computing the factors
        holds at once: patches, pre-activations and the K deltas of every rule
        layer, three copies of the per-example Jacobians, and the factors, all
        doubled for the intermediates of layers without a rule.
        """
        k = self.num_outputs
        factor = working = 0
        for rule in self._rules:
            rows = math.prod(rule.layer.kernel.shape[:-1])
            cols = rule.layer.kernel.shape[-1]
            positions = self._positions[rule.name]
            working += positions * (rows + (k + 2) * cols)
            if positions == 1:
                factor += rows + k * cols
            else:
                factor += k * sum(math.prod(v.shape) for v in rule.variables)
        jacobian_size = sum(math.prod(v.shape) for v in self._jacobian_variables)
        factor += k * jacobian_size
        working += 3 * k * jacobian_size
        return factor * itemsize, 2 * (factor + working) * itemsize
