"""Diagnostics of the kernel regime: distances between kernels and their scaling."""

import numpy as np


def relative_distance(kernel, reference):
    """||kernel - reference||_F / ||reference||_F for arrays of equal shape."""
    kernel = np.asarray(kernel, np.float64)
    reference = np.asarray(reference, np.float64)
    if kernel.shape != reference.shape:
        raise ValueError(f"Kernels must have equal shapes, got {kernel.shape} and {reference.shape}.")
    return float(np.linalg.norm(kernel - reference) / np.linalg.norm(reference))


def log_log_slope(x, y):
    """Least-squares slope of log(y) against log(x): the exponent a in y ~ x^a."""
    slope, _ = np.polyfit(np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64)), 1)
    return float(slope)
