"""Predictive uncertainty on the NTK: GP posteriors, gradient-descent dynamics, Laplace."""

from keras_ntk.predictive.numerics import Factorization, FactorizationError, factorize

__all__ = ["Factorization", "FactorizationError", "factorize"]
