"""tf.function for functions built once per model or per object.

TensorFlow counts the traces of a tf.function per Python code object (a lambda,
closure or method written once in the source, however many functions are made
from it) and logs "triggered tf.function retracing" after five traces in ten
calls. A function made anew for each model traces once per model by design, so a
sweep over models would log that warning while nothing retraces. `per_object`
keys TensorFlow's count on the function object itself.
"""

import functools

import tensorflow as tf


def per_object(python_function, **options):
    """tf.function(python_function, **options), its traces counted for this function only."""
    return tf.function(functools.partial(python_function), **options)
