"""Generalized Gauss-Newton (GGN) curvature of a Keras model in several structures.

GGN = sum_i J_i^T Lambda_i J_i, J_i = df(x_i)/dtheta (K x P), Lambda_i = L_i L_i^T the
Hessian of the negative log-likelihood in f_i: regression 1/s^2 I (stored for unit
noise, L = I, and multiplied by the curvature scale c = 1/s^2 when used);
classification diag(p) - p p^T with L = diag(sqrt p) - p sqrt(p)^T (c = 1).

Parameters form groups (the trainable variables of one layer), each with its prior
precision delta_g, so the posterior precision is P = c GGN + D, D = diag(delta).
Every structure provides, differentiable in (delta, c) where it matters:
  log_det_ratio(delta, c)   log det(c GGN + D) - log det D              (scalar)
  covariance(x, delta, c)   (J(x) P^-1 J(x)^T: (n, K, K), or joint (n K, n K),
                            jitter added to the inverted matrix, its condition number)
All arrays are float64.
"""

import collections
import math

import numpy as np
import tensorflow as tf

from keras_ntk.ntk import features as features_lib
from keras_ntk.ntk import rules as rules_lib
from keras_ntk.ntk.empirical import NTK
from keras_ntk.predictive import numerics


def parameter_groups(model):
    """OrderedDict layer path -> trainable variables of that layer, in model order."""
    groups = collections.OrderedDict()
    for v in model.trainable_variables:
        groups.setdefault(v.path.rsplit("/", 1)[0], []).append(v)
    return groups


def _size(variables):
    return sum(math.prod(v.shape) for v in variables)


def _quadratic_form(left, right, joint):
    """sum_q left[i, k, q] right[j, l, q]: (n K, n K) joint, or only its per-example
    blocks (n, K, K), in O(n) work and memory."""
    if joint:
        n, k = left.shape[0], left.shape[1]
        return tf.reshape(tf.einsum("ikq,jlq->ikjl", left, right), (n * k, n * k))
    return tf.einsum("ikq,ilq->ikl", left, right)


class _LastFactorization:
    """build(delta, scale) for the last (delta, scale) asked for: predictions with
    unchanged hyperparameters reuse the factorization; clear() when the curvature changes."""

    def __init__(self, build):
        self.build = build
        self.clear()

    def clear(self):
        self.key, self.value = None, None

    def __call__(self, delta, scale):
        key = (np.asarray(delta, np.float64).tobytes(), float(scale))
        if key != self.key:
            self.value, self.key = self.build(delta, scale), key
        return self.value


def kron_layer_covariance(a, g, inverse, joint):
    """One K-FAC layer's term of J P^-1 J^T, from the layer's factors in the
    eigenbases of its Kronecker factors.

    Args:
      a: (n, P, C) augmented inputs (patches) times Q_A.
      g: (n, K, P, O) output gradients times Q_G.
      inverse: (C, O), 1 / (c e_A e_G^T + delta): the posterior covariance's eigenvalues.
      joint: (n, K, n, K) when True, else the per-example blocks (n, K, K).
    Dense layers (P = 1) have gradients a g^T, so the (n, K, C, O) gradients are
    never formed: the blocks cost O(n (C O + K^2 O)) and the joint O(n^2 (C O + K^2 O)).
    """
    if a.shape[1] == 1:
        a, g = a[:, 0, :], g[:, :, 0, :]
        if joint:
            pair = tf.reshape(a[:, None, :] * a[None, :, :], (-1, a.shape[-1]))
            weights = tf.reshape(tf.matmul(pair, inverse), (tf.shape(a)[0], tf.shape(a)[0], -1))
            return tf.einsum("ijo,iko,jlo->ikjl", weights, g, g)
        return tf.einsum("io,iko,ilo->ikl", tf.matmul(a * a, inverse), g, g)
    m = tf.einsum("npc,nkpo->nkco", a, g)  # per-example gradients in the eigenbasis
    return tf.einsum("ikco,jlco,co->ikjl" if joint else "ikco,ilco,co->ikl", m, m, inverse)


class _JacobianCurvature:
    """Full or diagonal GGN over a subset of the groups, from per-example Jacobians."""

    def __init__(self, model, groups, diagonal, all_groups):
        self.model, self.groups, self.diagonal = model, groups, diagonal
        self.index = [list(all_groups).index(name) for name in groups]
        self.shared_prior = False
        self.variables = [v for vs in groups.values() for v in vs]
        size = _size(self.variables)
        self.ggn = tf.zeros((size,) if diagonal else (size, size), tf.float64)
        self._jacobian = tf.function(self._jacobian_fn, reduce_retracing=True)
        self.posterior_factor = _LastFactorization(
            lambda delta, scale: numerics.factorize(
                scale * self.ggn + tf.linalg.diag(self._prior_vector(delta)), "posterior precision"
            )
        )

    def _jacobian_fn(self, x):
        jacobians = features_lib.per_example_jacobians(self.model, self.variables, x)
        return tf.cast(tf.concat(jacobians, axis=-1), tf.float64)  # (n, K, P)

    def _prior_vector(self, delta):
        sizes = [_size(vs) for vs in self.groups.values()]
        return tf.repeat(tf.gather(delta, self.index), sizes)

    def accumulate(self, x, lam_sqrt):
        jt = tf.einsum("nkc,nkp->ncp", lam_sqrt, self._jacobian(x))
        if self.diagonal:
            self.ggn += tf.reduce_sum(jt**2, axis=(0, 1))
        else:
            jt = tf.reshape(jt, (-1, jt.shape[-1]))
            self.ggn += tf.matmul(jt, jt, transpose_a=True)
        self.posterior_factor.clear()

    def log_det_ratio(self, delta, scale):
        prior = self._prior_vector(delta)
        if self.diagonal:
            return tf.reduce_sum(tf.math.log(scale * self.ggn + prior) - tf.math.log(prior))
        if self.shared_prior:
            shared = prior[0]
            return tf.reduce_sum(tf.math.log1p(scale * self.eigenvalues / shared))
        chol = tf.linalg.cholesky(scale * self.ggn + tf.linalg.diag(prior))
        return 2 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol))) - tf.reduce_sum(
            tf.math.log(prior)
        )

    def covariance(self, x, delta, scale, joint):
        jac = self._jacobian(x)
        n, k, p = jac.shape
        prior = self._prior_vector(delta)
        if self.diagonal:
            precision = scale * self.ggn + prior
            condition = float(tf.reduce_max(precision) / tf.reduce_min(precision))
            return _quadratic_form(jac, jac / precision, joint), 0.0, condition
        factor = self.posterior_factor(delta, scale)
        solved = tf.transpose(factor.solve(tf.transpose(tf.reshape(jac, (n * k, p)))))  # J P^-1: (n K, P)
        return _quadratic_form(jac, tf.reshape(solved, (n, k, p)), joint), factor.jitter, factor.condition_number

    def finalize(self):
        """Eigenvalues of the full GGN, for log det(c GGN + delta I) with one delta."""
        if not self.diagonal:
            self.eigenvalues = tf.maximum(tf.linalg.eigvalsh(self.ggn), 0.0)

    def state(self):
        return {"ggn": self.ggn.numpy()}

    def restore(self, state):
        self.ggn = tf.constant(state["ggn"], tf.float64)
        self.posterior_factor.clear()


class _KronCurvature:
    """K-FAC: per Dense/Conv2D layer P_l ~ (A_l (x) G_l) / count + delta_l I, with
    A = sum over examples and positions of a~ a~^T (a~ = [weight_scale a, bias_scale]),
    G = sum of L^T-weighted deltas' outer products (positions as extra examples,
    "expand" K-FAC); exact for a single dense layer. Other groups: diagonal GGN."""

    def __init__(self, model, groups):
        self.model = model
        rules = {r.name: r for r in rules_lib.find_rules(model)}
        example = tf.zeros((1, *model.input_shape[1:]), model.inputs[0].dtype)
        calls, _, _ = rules_lib.trace_calls(model, list(rules.values()), example)
        self.rules = [
            rules[name]
            for name in groups
            if name in rules and calls[name] == 1 and self._covers(rules[name], groups[name])
        ]
        ruled = {r.name for r in self.rules}
        self.kron_groups = [name for name in groups if name in ruled]
        others = collections.OrderedDict((k, v) for k, v in groups.items() if k not in ruled)
        self.rest = _JacobianCurvature(model, others, True, groups) if others else None
        self.group_index = {name: i for i, name in enumerate(groups)}
        self.a = {r.name: 0.0 for r in self.rules}
        self.g = {r.name: 0.0 for r in self.rules}
        self.count = {r.name: 0.0 for r in self.rules}
        self._probe = tf.function(self._probe_fn, reduce_retracing=True)

    def _probe_fn(self, x):
        """[(patches, delta)] in the order of self.rules."""
        _, probes = rules_lib.probe_layers(self.model, self.rules, x)
        by_name = {rule.name: (patches, delta) for rule, patches, delta in probes}
        return [by_name[rule.name] for rule in self.rules]

    @staticmethod
    def _covers(rule, variables):
        return {id(v) for v in rule.variables} == {id(v) for v in variables}

    @staticmethod
    def _augmented(rule, patches):
        parts = []
        if rule.use_kernel:
            parts.append(rule.weight_scale * patches)
        if rule.use_bias:
            parts.append(rule.bias_scale * tf.ones_like(patches[..., :1]))
        return tf.cast(tf.concat(parts, axis=-1), tf.float64)

    def accumulate(self, x, lam_sqrt):
        for rule, (patches, delta) in zip(self.rules, self._probe(x)):
            a = self._augmented(rule, patches)
            d = tf.einsum("nkc,nkpo->ncpo", lam_sqrt, tf.cast(delta, tf.float64))
            self.a[rule.name] += tf.einsum("npc,npd->cd", a, a)
            self.g[rule.name] += tf.einsum("ncpo,ncpq->oq", d, d)
            self.count[rule.name] += float(a.shape[0] * a.shape[1])
        if self.rest is not None:
            self.rest.accumulate(x, lam_sqrt)

    def finalize(self):
        """Eigendecompose A and G / count of every layer."""
        self.eigen = {}
        for rule in self.rules:
            ea, qa = tf.linalg.eigh(tf.convert_to_tensor(self.a[rule.name], tf.float64))
            eg, qg = tf.linalg.eigh(tf.convert_to_tensor(self.g[rule.name], tf.float64) / self.count[rule.name])
            self.eigen[rule.name] = (tf.maximum(ea, 0.0), qa, tf.maximum(eg, 0.0), qg)

    def log_det_ratio(self, delta, scale):
        total = tf.constant(0.0, tf.float64)
        for rule in self.rules:
            ea, _, eg, _ = self.eigen[rule.name]
            d = delta[self.group_index[rule.name]]
            total += tf.reduce_sum(tf.math.log(scale * ea[:, None] * eg[None, :] + d) - tf.math.log(d))
        if self.rest is not None:
            total += self.rest.log_det_ratio(delta, scale)
        return total

    def covariance(self, x, delta, scale, joint):
        cov = 0.0
        extremes = []
        for rule, (patches, d) in zip(self.rules, self._probe(x)):
            ea, qa, eg, qg = self.eigen[rule.name]
            a = tf.einsum("npc,cd->npd", self._augmented(rule, patches), qa)
            g = tf.einsum("nkpo,oq->nkpq", tf.cast(d, tf.float64), qg)
            precision = scale * ea[:, None] * eg[None, :] + delta[self.group_index[rule.name]]
            cov += kron_layer_covariance(a, g, 1.0 / precision, joint)
            extremes += [float(tf.reduce_min(precision)), float(tf.reduce_max(precision))]
        if joint and self.rules:
            n, k = cov.shape[0], cov.shape[1]
            cov = tf.reshape(cov, (n * k, n * k))
        if self.rest is not None:
            rest_cov, _, rest_condition = self.rest.covariance(x, delta, scale, joint)
            cov += rest_cov
        condition = max(extremes) / min(extremes) if extremes else 1.0
        if self.rest is not None:
            condition = max(condition, rest_condition)
        return cov, 0.0, condition

    def state(self):
        state = {}
        for rule in self.rules:
            state[f"a/{rule.name}"] = np.asarray(self.a[rule.name])
            state[f"g/{rule.name}"] = np.asarray(self.g[rule.name])
            state[f"count/{rule.name}"] = np.asarray(self.count[rule.name])
        if self.rest is not None:
            state["rest/ggn"] = self.rest.ggn.numpy()
        return state

    def restore(self, state):
        for rule in self.rules:
            self.a[rule.name] = tf.constant(state[f"a/{rule.name}"], tf.float64)
            self.g[rule.name] = tf.constant(state[f"g/{rule.name}"], tf.float64)
            self.count[rule.name] = float(state[f"count/{rule.name}"])
        if self.rest is not None:
            self.rest.ggn = tf.constant(state["rest/ggn"], tf.float64)


class _FunctionSpaceCurvature:
    """The GP view: prior kernel K = sum_g Theta_g / delta_g (per-layer NTKs at theta*),
    B = L^T K_XX L over the stored training inputs X (a subset when asked);
    log det ratio = log det(I + c B) and cov = K_** - c K_*X L (I + c B)^-1 L^T K_X*,
    equal to the weight-space full GGN Laplace by the matrix determinant lemma."""

    def __init__(self, model, groups):
        self.groups = list(groups)
        self.ntk = NTK(model, output="full", per_layer=True, dtype=tf.float64, progress=False)
        self.ntk_diagonal = NTK(model, output="diagonal", per_layer=True, dtype=tf.float64, progress=False)
        self.x, self.lam_sqrt = [], []
        self.factor = _LastFactorization(
            lambda delta, scale: numerics.factorize(
                tf.eye(self.lam.shape[0] * self.lam.shape[1], dtype=tf.float64) + scale * self._b(delta), "I + c B"
            )
        )

    def accumulate(self, x, lam_sqrt):
        self.x.append(np.asarray(x))
        self.lam_sqrt.append(lam_sqrt)

    def finalize(self):
        """Per-layer kernels over the stored training inputs, (G, N, N, K, K)."""
        self.x_train = np.concatenate(self.x)
        self.lam = tf.concat(self.lam_sqrt, axis=0)
        per_layer = self.ntk(self.x_train)
        self.kernels = tf.stack([per_layer[g] for g in self.groups])
        self.factor.clear()

    def _b(self, delta):
        prior = tf.einsum("gijkl,g->ijkl", self.kernels, 1.0 / delta)
        b = tf.einsum("ikc,ijkl,jld->icjd", self.lam, prior, self.lam)
        n, k = b.shape[0], b.shape[1]
        return tf.reshape(b, (n * k, n * k))

    def log_det_ratio(self, delta, scale):
        b = self._b(delta)
        chol = tf.linalg.cholesky(tf.eye(b.shape[0], dtype=tf.float64) + scale * b)
        return 2 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))

    def covariance(self, x, delta, scale, joint):
        cross = self.ntk(x, self.x_train)
        k_star = tf.einsum("gijkl,g->ijkl", tf.stack([cross[g] for g in self.groups]), 1.0 / delta)
        k_star_l = tf.einsum("ijkl,jlc->ikjc", k_star, self.lam)  # K_*X L: (n, K, N, K)
        n, k = k_star_l.shape[0], k_star_l.shape[1]
        flat = tf.reshape(k_star_l, (n * k, -1))
        factor = self.factor(delta, scale)
        solved = tf.reshape(tf.transpose(factor.solve(tf.transpose(flat))), (n, k, -1))  # K_*X L (I + c B)^-1
        reduction = scale * _quadratic_form(tf.reshape(flat, (n, k, -1)), solved, joint)
        if joint:
            prior = self.ntk(x)
            prior = tf.einsum("gijkl,g->ikjl", tf.stack([prior[g] for g in self.groups]), 1.0 / delta)
            return tf.reshape(prior, (n * k, n * k)) - reduction, factor.jitter, factor.condition_number
        prior = self.ntk_diagonal(x)
        prior = tf.einsum("gikl,g->ikl", tf.stack([prior[g] for g in self.groups]), 1.0 / delta)
        return prior - reduction, factor.jitter, factor.condition_number

    def state(self):
        return {"x": np.concatenate(self.x), "lam_sqrt": tf.concat(self.lam_sqrt, axis=0).numpy()}

    def restore(self, state):
        self.x, self.lam_sqrt = [state["x"]], [tf.constant(state["lam_sqrt"], tf.float64)]


def make(structure, model, groups):
    """The curvature object of a structure name."""
    if structure == "full":
        return _JacobianCurvature(model, groups, False, groups)
    if structure == "diag":
        return _JacobianCurvature(model, groups, True, groups)
    if structure == "last_layer":
        last = list(groups)[-1]
        return _JacobianCurvature(model, collections.OrderedDict([(last, groups[last])]), False, groups)
    if structure == "kron":
        return _KronCurvature(model, groups)
    return _FunctionSpaceCurvature(model, groups)
