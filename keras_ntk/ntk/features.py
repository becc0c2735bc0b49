"""Per-example NTK factors: the Jacobian path and the structured path.

The NTK is a sum over parameter groups (a layer's kernel and bias, or the
variables of a layer without a rule). Each group yields per-example factors:

  "factored"  (A (n, C), D (n, K, O)):  Theta_g = (wc <A_i, A_j> + bc) <D_ik, D_jl>,
              a dense layer on (batch, features) inputs, wc = weight_scale^2,
              bc = bias_scale^2 (0 for a frozen part);
  "gradient"  (G (n, K, P)):            Theta_g = <G_ik, G_jl>,
              per-example gradients df_k/dtheta_g, formed structurally from
              patches and deltas (convolutions, grouped ones per group) or by
              autodiff (the Jacobian path).

The deltas of rule layers come from the explicit backward recursion of
chain.py when the rule layers are a chain of dense layers ending at the output,
else from the probed pass of rules.py (K vectorized backward passes). Both the
probed pass and the Jacobian path rely on TensorFlow's automatic vectorization;
`FeatureMap` checks them once when it is built (vectorization.py) and computes
the groups that fail the check without vectorization.
"""

import collections
import dataclasses
import math
import threading

import tensorflow as tf

from keras_ntk import traced
from keras_ntk.ntk import chain as chain_lib
from keras_ntk.ntk import contract as contract_lib
from keras_ntk.ntk import rules as rules_lib
from keras_ntk.ntk import vectorization


@dataclasses.dataclass(frozen=True)
class Group:
    """One parameter group of the NTK sum (see the module docstring for `kind`).

    Attributes:
      name: the owning layer's path (per-layer kernels are keyed by it).
      kind: "factored" | "gradient".
      weight_coef, bias_coef: wc and bc of a factored group.
      variables: the group's trainable variables.
    """

    name: str
    kind: str
    weight_coef: float = 0.0
    bias_coef: float = 0.0
    variables: tuple = dataclasses.field(default=(), compare=False)


@dataclasses.dataclass(frozen=True)
class GroupCost:
    """Estimated cost of one parameter group (`FeatureMap.costs`).

    Attributes:
      name: the group's layer path; method: how its factors are computed
        ("dense chain", "structured", "structured (gradients)", "jacobian").
      encode_flops: FLOPs to compute one example's factors.
      pair_flops: FLOPs of one (x1, x2) example pair's kernel block.
      factor_bytes: bytes of one example's factors.
      flops: FLOPs of a whole request (filled in by the strategy's `costs`).
    """

    name: str
    method: str
    encode_flops: float
    pair_flops: float
    factor_bytes: int
    flops: float = 0.0


def _owner(variable):
    return variable.path.rsplit("/", 1)[0]


def per_example_jacobians(model, variables, x, vectorized=True):
    """Per-example Jacobians, list of (n, K, size(v)) for each variable v.

    Computed on the model's twin (rules.twin: grouped convolutions as ungrouped
    ones), call inside tf.function. vectorized=True maps over examples and outputs
    with TensorFlow's vectorization (tf.vectorized_map, tape.jacobian's pfor);
    False loops over both (n K backward passes, for layers whose vectorized
    gradients are wrong).
    """
    forward = rules_lib.twin(model).model

    def one(xi):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([v.value for v in variables])
            f = rules_lib.flat_outputs(forward, xi[None])[0]
        jac = tape.jacobian(
            f,
            [v.value for v in variables],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
            experimental_use_pfor=vectorized,
        )
        return [tf.reshape(j, (tf.shape(f)[0], -1)) for j in jac]

    if vectorized:
        return tf.vectorized_map(one, x)
    signature = [tf.TensorSpec((None, math.prod(v.shape)), v.dtype) for v in variables]
    return tf.map_fn(one, x, fn_output_signature=signature)


class FeatureMap:
    """Maps a batch x (n, ...) to the per-example factors of every parameter group.

    Args:
      model: a built Keras model with one output tensor.
      method: "structured" (rules where they exist, Jacobians for the rest),
        "structured_dense" (rules for dense layers only: convolutions take the
        Jacobian path) or "jacobian" (Jacobians for all trainable variables).
      example: one or two input examples with their batch axis, (m, ...), used to
        find which rule layers the forward pass calls exactly once (and for the
        check below when the first call is traced).
      dtype: dtype of the dense-chain recursion (chain.probe_chain); default the
        model's compute dtype. The other factors are the model's own gradients, in
        the model's compute dtype.
    Attributes:
      groups: the `Group`s, in the order of the factors returned by `__call__`.
      num_outputs: K.
      rules: the rules.LayerRule of every layer with a structured rule.
      chain: `rules` when they form a dense chain taking the explicit recursion, else None.
      unvectorized: names of the groups whose vectorized gradients failed the
        check; their path (the probed pass of rule layers, or the Jacobian path)
        runs without vectorization.

    The first call checks every group whose factors come from TensorFlow's
    vectorization (all but the chain's) once, as vectorization.py describes, on
    that call's first two examples: 2 m unvectorized backward passes and one
    float64 contraction of m examples, no extra trace. (A first call inside
    someone else's tf.function checks on `example` instead, eagerly in a fresh
    thread (traced.eagerly), which traces the factor function once more.) A group that fails is recomputed without
    vectorization (a loop of K backward passes for rule layers, of n K for the
    Jacobian path; a RuntimeWarning names it) and checked again; if it still fails,
    ValueError names its layer. Later calls pay nothing.
    """

    def __init__(self, model, method, example, dtype=None):
        self.model = model
        self.dtype = None if dtype is None else tf.as_dtype(dtype)
        trainable = list(model.trainable_variables)
        if not trainable:
            raise ValueError(f"Model {model.name!r} has no trainable variables: its NTK is zero.")
        known = rules_lib.find_rules(model, grouped=True)
        calls, self._positions, self.num_outputs = rules_lib.trace_calls(model, known, example[:1])
        self._known = {r.name: r for r in known if calls[r.name] == 1}
        self.rules = [
            r
            for r in self._known.values()
            if method == "structured" or (method == "structured_dense" and not r.is_conv())
        ]
        self.chain = chain_lib.find(model, self.rules, example[:1])
        if self.chain is not None:
            self.rules = self.chain
        ruled = {id(v) for r in self.rules for v in r.variables}
        self._jacobian_variables = [v for v in trainable if id(v) not in ruled]
        self._jacobian_groups = collections.OrderedDict()
        for v in self._jacobian_variables:
            self._jacobian_groups.setdefault(_owner(v), []).append(v)
        self.groups = [self._rule_group(r) for r in self.rules] + [
            Group(name, "gradient", variables=tuple(vs)) for name, vs in self._jacobian_groups.items()
        ]
        self._vectorized_deltas = self._vectorized_jacobians = True
        self.unvectorized = ()
        self._compiled = traced.per_object(self.factors, reduce_retracing=True)
        self._example = example
        self._checked_groups = collections.OrderedDict()
        chain = {r.name for r in self.chain or ()}
        for group in self.groups:
            if group.name not in chain:
                self._checked_groups.setdefault(group.name, []).extend(group.variables)
        self._check_lock = threading.Lock()
        self._checked = not self._checked_groups

    def _rule_group(self, rule):
        if self._positions[rule.name] == 1 and rule.groups == 1:
            return Group(
                rule.name,
                "factored",
                rule.weight_scale**2 if rule.use_kernel else 0.0,
                rule.bias_scale**2 if rule.use_bias else 0.0,
                tuple(rule.variables),
            )
        return Group(rule.name, "gradient", variables=tuple(rule.variables))

    def factors(self, x):
        """Factors for x (n, ...), traced into the calling tf.function: see `__call__`."""
        factors = []
        if self.chain is not None:
            probes = chain_lib.probe_chain(self.model, self.chain, x, self.dtype)
            factors += [(a, delta) for _, a, delta in probes]
        elif self.rules:
            _, probes = rules_lib.probe_layers(self.model, self.rules, x, self._vectorized_deltas)
            factors += [self._rule_factors(*probe) for probe in probes]
        if self._jacobian_variables:
            jacobians = per_example_jacobians(
                self.model, self._jacobian_variables, x, self._vectorized_jacobians
            )
            by_variable = {id(v): j for v, j in zip(self._jacobian_variables, jacobians)}
            for variables in self._jacobian_groups.values():
                factors.append((tf.concat([by_variable[id(v)] for v in variables], axis=-1),))
        return factors

    def _rule_factors(self, rule, patches, delta):
        """Factors of one rule layer from patches (n, P, C) and delta (n, K, P, O)."""
        if self._positions[rule.name] == 1 and rule.groups == 1:
            return patches[:, 0, :], delta[:, :, 0, :]
        return (rule.gradients(patches, delta),)

    def __call__(self, x):
        """Factors for x (n, ...): a list aligned with `groups`, tuples of tensors."""
        if not self._checked:
            with self._check_lock:
                if not self._checked and tf.executing_eagerly():
                    return self._checked_call(tf.convert_to_tensor(x))
                if not self._checked:
                    traced.eagerly(lambda: self._checked_call(tf.constant(self._example)))
        return self._compiled(x)

    # -- the check of vectorized gradients -------------------------------------
    def _checked_call(self, x):
        """Factors of x (eager), checked on its first examples (see the class docstring)."""
        m = min(2, x.shape[0])
        computed = []

        def blocks():
            computed[:] = [self._compiled(x)]
            first = [tuple(t[:m] for t in f) for f in computed[0]]
            kernels = contract_lib.contract(self.groups, first, None, "full", tf.float64, True, True)
            return {name: kernels[name].numpy() for name in self._checked_groups}

        self.unvectorized = vectorization.check(
            self.model, self._checked_groups, x[:m].numpy(), self.num_outputs, blocks, self._fall_back
        )
        self._checked = True
        return computed[0]

    def _fall_back(self, names):
        """Compute the groups `names` (and those sharing their path) without vectorization."""
        self._vectorized_deltas &= not any(r.name in names for r in self.rules)
        self._vectorized_jacobians &= not any(name in self._jacobian_groups for name in names)
        self._compiled = traced.per_object(self.factors, reduce_retracing=True)

    @property
    def checked(self):
        """Whether the one-time check of vectorized gradients has run."""
        return self._checked

    def costs(self, output, itemsize=4):
        """Estimated cost of every group, a list of `GroupCost` aligned with `groups`.

        FLOPs count multiply-adds as 2 and leave out elementwise work. Per example,
        with F = 2 P |W| the forward FLOPs of a rule layer (P patch positions, |W|
        its kernel entries), C its patch size and O its outputs:
          dense chain   F, plus the recursion's 2 K O_{l+1} O_l to the layer above;
          structured    F and the K probed backward passes through it, K F, plus K F
                        to form per-example gradients when positions or groups > 1;
          jacobian      F, K F backward and K F parameter gradients for a layer with
                        a rule's shape, else 4 K S for its S parameters.
        Per pair of examples (full; trace drops one factor K, see contract.py):
        2 (C + K^2 O) for a factored group, 2 K^2 S for a per-example-gradient group.
        """
        k = self.num_outputs
        chain = {r.name: i for i, r in enumerate(self.chain or ())}
        rules = {r.name: r for r in self.rules}
        k_pair = k * k if output != "trace" else k
        out = []
        for group in self.groups:
            size = sum(math.prod(v.shape) for v in group.variables)
            known = self._known.get(group.name)
            forward = 2 * self._positions[group.name] * math.prod(known.layer.kernel.shape) if known else 0
            if group.name in chain:
                index = chain[group.name]
                above = self.chain[index + 1].layer.kernel.shape if index + 1 < len(self.chain) else None
                encode = forward + (2 * k * above[0] * above[1] if above is not None else 0)
                method = "dense chain"
            elif group.name in rules:
                encode = forward * (1 + k) + (k * forward if group.kind == "gradient" else 0)
                method = "structured" if group.kind == "factored" else "structured (gradients)"
            else:
                encode = forward * (1 + 2 * k) if known else 4 * k * size
                method = "jacobian"
            if group.kind == "factored":
                rule = rules[group.name]
                c, o = math.prod(rule.layer.kernel.shape[:-1]), rule.layer.kernel.shape[-1]
                pair, factor = 2 * (c + k_pair * o), c + k * o
            else:
                pair, factor = 2 * k_pair * size, k * size
            out.append(GroupCost(group.name, method, float(encode), float(pair), factor * itemsize))
        return out

    def bytes_per_example(self, itemsize=4):
        """(factor bytes, working bytes) per example.

        Working bytes are a conservative estimate of what computing the factors
        holds at once: patches, pre-activations and the K deltas of every rule
        layer, three copies of the per-example Jacobians, and the factors, all
        doubled for the intermediates of layers without a rule.
        """
        k = self.num_outputs
        factor = working = 0
        for rule in self.rules:
            rows = math.prod(rule.layer.kernel.shape[:-1]) * rule.groups
            cols = rule.layer.kernel.shape[-1]
            positions = self._positions[rule.name]
            working += positions * (rows + (k + 2) * cols)
            if positions == 1 and rule.groups == 1:
                factor += rows + k * cols
            else:
                factor += k * sum(math.prod(v.shape) for v in rule.variables)
        jacobian_size = sum(math.prod(v.shape) for v in self._jacobian_variables)
        factor += k * jacobian_size
        working += 3 * k * jacobian_size
        return factor * itemsize, 2 * (factor + working) * itemsize
