"""tf.function for functions built once per model or per object, and eager work
requested while a tf.function is being traced.

TensorFlow counts the traces of a tf.function per Python code object (a lambda,
closure or method written once in the source, however many functions are made
from it) and logs "triggered tf.function retracing" after five traces in ten
calls. A function made anew for each model traces once per model by design, so a
sweep over models would log that warning while nothing retraces. `per_object`
keys TensorFlow's count on the function object itself.

`eagerly` runs one-time setup (probing a model, checking gradients) eagerly even
when it is first needed inside a caller's tf.function. tf.init_scope() would lift
the ops out of the trace but stops gradient tapes from recording, so tapes there
return None gradients; a fresh thread starts eager, with recording on.
"""

import functools
import threading

import tensorflow as tf


def per_object(python_function, **options):
    """tf.function(python_function, **options), its traces counted for this function only."""
    return tf.function(functools.partial(python_function), **options)


def eagerly(function, *args):
    """function(*args), run eagerly: here when executing eagerly, else in a fresh thread
    (its exceptions are re-raised here). `function` must not wait for locks the
    caller holds."""
    if tf.executing_eagerly():
        return function(*args)
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # re-raised in the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="keras-ntk-eager")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
