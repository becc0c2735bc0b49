"""Natural-gradient benchmark: one NGD step against one Adam step and an NGD step that forms J.

Model: MLP 784-1024-1024-10 (NTK parametrization, P = 1,863,690), squared loss,
random inputs and targets. Methods, each in a fresh worker process (median of
--repeats timed steps after one warm-up step, and the worker's peak RSS):

  baseline    build the model and run one forward pass (TF runtime + weights)
  ngd         keras_ntk.optimizers.NaturalGradient.step (Levenberg-Marquardt, Gram in float32)
  ngd64       the same with gram_dtype="float64"
  adam        one compiled keras Adam step on the same loss
  explicit    an NGD step that forms J (B K, P) with tape.jacobian, G = J J^T,
              solves (G + lambda I) alpha = r in float64 and applies -J^T alpha

  python benchmarks/ngd_bench.py [--batches 32,128] [--methods ...] [--explicit-max-gib 3]

The explicit step needs 4 B K P bytes for J alone (9.5 GB at B = 128); it runs
only at batches where that is below --explicit-max-gib and is reported as
skipped elsewhere.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

ARCHITECTURE = dict(width=1024, depth=2, outputs=10, inputs=784)
METHODS = ("baseline", "ngd", "ngd64", "adam", "explicit")


def _parameters():
    a = ARCHITECTURE
    hidden = a["inputs"] * a["width"] + a["width"] + (a["depth"] - 1) * (a["width"] ** 2 + a["width"])
    return hidden + a["width"] * a["outputs"] + a["outputs"]


def _model_and_batch(batch):
    import keras
    import numpy as np

    import keras_ntk

    keras.utils.set_random_seed(0)
    a = ARCHITECTURE
    model = keras_ntk.models.mlp(a["width"], a["depth"], a["outputs"], input_shape=(a["inputs"],))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, a["inputs"])).astype(np.float32)
    y = rng.normal(size=(batch, a["outputs"])).astype(np.float32)
    return model, x, y


def _adam_step(model, x, y):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(1e-3)
    variables = model.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum((model(x) - y) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def _explicit_step(model, x, y, damping=1.0):
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            f = model(x)
        rows = tf.shape(f)[0] * tf.shape(f)[1]
        jacobians = tape.jacobian(f, variables)
        jac = tf.concat([tf.reshape(j, (rows, -1)) for j in jacobians], axis=1)
        gram = tf.cast(tf.matmul(jac, jac, transpose_b=True), tf.float64)
        residual = tf.cast(tf.reshape(f - y, (-1, 1)), tf.float64)
        alpha = tf.linalg.solve(gram + damping * tf.eye(rows, dtype=tf.float64), residual)
        delta = -tf.matmul(jac, tf.cast(alpha, jac.dtype), transpose_a=True)[:, 0]
        offset = 0
        for v in variables:
            size = tf.size(v)
            v.assign_add(tf.reshape(delta[offset : offset + size], v.shape))
            offset += size
        return tf.reduce_sum(residual**2)

    return step


def worker(method, batch, repeats):
    """Time one (method, batch) in this process; print one JSON line."""
    from keras_ntk import _tf_quiet  # noqa: F401
    import numpy as np
    import tensorflow as tf

    from keras_ntk.optimizers import NaturalGradient

    model, x, y = _model_and_batch(batch)
    x, y = tf.constant(x), tf.constant(y)
    if method == "baseline":
        step = lambda: model(x)  # noqa: E731
    elif method in ("ngd", "ngd64"):
        ngd = NaturalGradient(model, damping=1.0, gram_dtype="float64" if method == "ngd64" else "float32")
        step = lambda: ngd.step(x, y)["loss"]  # noqa: E731
    elif method == "adam":
        step = _adam_step(model, x, y)
    else:
        step = _explicit_step(model, x, y)
    np.asarray(step())  # warm-up: trace and compile
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        np.asarray(step())
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(method=method, batch=batch, params=params, seconds=float(np.median(wall)),
                          cpu_seconds=float(np.median(cpu)), peak_bytes=peak)))


def _run(method, batch, repeats, timeout):
    command = [sys.executable, __file__, "--worker", method, str(batch), "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(method=method, batch=batch, error=f"timed out after {timeout} s")
    if done.returncode != 0:
        return dict(method=method, batch=batch, error=done.stderr.strip().splitlines()[-1][:200])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--explicit-max-gib", type=float, default=3.0)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.repeats)
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    a = ARCHITECTURE
    print(f"MLP {a['inputs']}-{a['width']}x{a['depth']}-{a['outputs']}, median of {args.repeats} steps "
          "after a warm-up; each row a fresh process; peak RSS includes the TF runtime.")
    print(f"{'method':>9} {'batch':>6} {'wall s':>9} {'CPU s':>9} {'peak GiB':>9}  note")
    rows = []
    for batch in map(int, args.batches.split(",")):
        for method in methods:
            jacobian_gib = 4 * batch * a["outputs"] * _parameters() / 2**30
            if method == "explicit" and jacobian_gib > args.explicit_max_gib:
                print(f"{method:>9} {batch:>6} {'-':>9} {'-':>9} {'-':>9}  skipped: J alone is "
                      f"{jacobian_gib:.1f} GiB > --explicit-max-gib {args.explicit_max_gib:g}", flush=True)
                continue
            row = _run(method, batch, args.repeats, args.timeout)
            rows.append(row)
            if "error" in row:
                print(f"{method:>9} {batch:>6} {'-':>9} {'-':>9} {'-':>9}  failed: {row['error']}", flush=True)
                continue
            note = f"P = {row['params']:,}, P^2 float32 = {4 * row['params']**2 / 2**40:.1f} TiB" if method == "baseline" else ""
            print(f"{method:>9} {batch:>6} {row['seconds']:>9.4f} {row['cpu_seconds']:>9.4f} "
                  f"{row['peak_bytes'] / 2**30:>9.2f}  {note}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
