"""Infinite-width kernel benchmark: keras_ntk.infinite_width_kernel_fn beside neural-tangents' stax.

Cases (issue 17), NNGP and NTK together, float64, N = M = 16 (x2 given):
  wrn      keras_ntk.models.wide_resnet(10, 1, 10) on 16x16x3 (LayerNorm, ReLU, global average pooling)
  strided  three stride-2 'same' 3x3 convolutions (64 channels, ReLU) on 32x32x3, global average pooling
  strided_flatten  the same with Flatten: no position pair p != q is ever formed

Every (case, side) runs in a fresh worker process: one warm-up call (its time is
"first call", tracing / jit included), then the median of --repeats calls, the
worker's peak RSS and its RSS before the first call (the runtime's share). The
cost of keras-ntk's maps is proportional to N M times `total_entries`, the kernel
entries per pair of examples summed over the network's tensors: (H W)^2 for a
tensor whose consumers pool (all position pairs), H W when only p = q is read,
1 for vectors.

With --nt-python (the interpreter of benchmarks/make_nt_env.sh), the same
architecture written in stax runs there with jax_enable_x64 (jit of
`kernel_fn(x1, x2, ("nngp", "ntk"))`); the table gives NT's time over keras-ntk's
(> 1: keras-ntk faster) and the max |difference| / max |kernel| of both kernels.
neural-tangents' LayerNorm has no parameters, so for the comparison the Keras
LayerNormalization layers are frozen (trainable=False), and its AvgPool-free
networks need no edge handling.

  python benchmarks/infinite_bench.py [--cases wrn,strided,strided_flatten] [--repeats 3]
         [--nt-python ~/nt-venv/bin/python]
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve()
CASES = ("wrn", "strided", "strided_flatten")
SHAPES = {"wrn": (16, 16, 3), "strided": (32, 32, 3), "strided_flatten": (32, 32, 3)}
N = M = 16
W_STD, B_STD, EPS = 2**0.5, 0.1, 1e-3


def rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def inputs(case):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.normal(size=(N, *SHAPES[case])), rng.normal(size=(M, *SHAPES[case]))


# -- keras-ntk side --------------------------------------------------------------------------
def keras_model(case):
    import keras

    import keras_ntk
    from keras_ntk import layers

    keras.utils.set_random_seed(0)
    if case == "wrn":
        model = keras_ntk.models.wide_resnet(10, 1, 10, input_shape=SHAPES[case])
        for layer in model.layers:
            if isinstance(layer, keras.layers.LayerNormalization):
                layer.trainable = False
        return model
    x = inputs_ = keras.Input(SHAPES[case])
    for _ in range(3):
        x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", w_std=W_STD, b_std=B_STD)(x)
    x = keras.layers.GlobalAveragePooling2D()(x) if case == "strided" else keras.layers.Flatten()(x)
    return keras.Model(inputs_, layers.Dense(10, w_std=W_STD, b_std=B_STD)(x))


def keras_worker(case, repeats, out):
    import numpy as np

    import keras_ntk

    x1, x2 = inputs(case)
    kernel_fn = keras_ntk.infinite_width_kernel_fn(keras_model(case))
    modes = {}
    for _, _, mode, spatial in kernel_fn.program.describe():
        modes.setdefault(mode, set()).add(tuple(spatial))
    rss_before = rss_mb()
    start = time.perf_counter()
    result = kernel_fn(x1, x2, get=("nngp", "ntk"))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kernel_fn(x1, x2, get=("nngp", "ntk"))
        times.append(time.perf_counter() - start)
    np.savez(out + ".npz", nngp=result.nngp.numpy(), ntk=result.ntk.numpy())
    return dict(
        first_call_s=first,
        median_s=statistics.median(times),
        cpu_s=time.process_time(),
        rss_before_mb=rss_before,
        total_entries=kernel_fn.total_entries,
        peak_entries=kernel_fn.peak_entries,
        modes={mode: sorted(shapes) for mode, shapes in modes.items()},
    )


# -- neural-tangents side (runs in the interpreter of make_nt_env.sh) -------------------------
def nt_network(case):
    from neural_tangents import stax

    def conv(channels, size, stride=1, padding="SAME"):
        return stax.Conv(channels, (size, size), (stride, stride), padding, W_std=W_STD, b_std=B_STD)

    def norm_relu():
        return stax.serial(stax.LayerNorm(axis=-1, eps=EPS), stax.Relu())

    if case == "wrn":  # keras_ntk.models.wide_resnet(10, 1, 10): one pre-activation block per group
        blocks, channels_in = [], 16
        for channels, stride in ((16, 1), (32, 2), (64, 2)):
            main = stax.serial(conv(channels, 3, stride), norm_relu(), conv(channels, 3))
            if stride != 1 or channels != channels_in:
                block = stax.serial(
                    norm_relu(), stax.FanOut(2), stax.parallel(conv(channels, 1, stride, "VALID"), main), stax.FanInSum()
                )
            else:
                block = stax.serial(
                    stax.FanOut(2), stax.parallel(stax.Identity(), stax.serial(norm_relu(), main)), stax.FanInSum()
                )
            blocks.append(block)
            channels_in = channels
        return stax.serial(conv(16, 3), *blocks, norm_relu(), stax.GlobalAvgPool(), stax.Dense(10, W_STD, B_STD))
    layers = []
    for _ in range(3):
        layers += [conv(64, 3, 2), stax.Relu()]
    head = stax.GlobalAvgPool() if case == "strided" else stax.Flatten()
    return stax.serial(*layers, head, stax.Dense(10, W_STD, B_STD))


def nt_worker(case, repeats, out):
    import warnings

    warnings.filterwarnings("ignore", message=".*FanIn.*")
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    x1, x2 = inputs(case)
    kernel_fn = jax.jit(nt_network(case)[2], static_argnames="get")
    rss_before = rss_mb()
    start = time.perf_counter()
    result = kernel_fn(x1, x2, get=("nngp", "ntk"))
    jax.block_until_ready(result)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(kernel_fn(x1, x2, get=("nngp", "ntk")))
        times.append(time.perf_counter() - start)
    np.savez(out + ".npz", nngp=np.asarray(result.nngp), ntk=np.asarray(result.ntk))
    return dict(first_call_s=first, median_s=statistics.median(times), cpu_s=time.process_time(), rss_before_mb=rss_before)


# -- driver ----------------------------------------------------------------------------------
def run_worker(python, side, case, repeats, directory, timeout):
    out = str(pathlib.Path(directory) / f"{side}_{case}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    done = subprocess.run(
        [python, str(HERE), "--worker", side, "--cases", case, "--repeats", str(repeats), "--out", out],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nt-python", default=None)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--worker", choices=("keras", "nt"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; expected some of {CASES}")
    if args.worker:
        (case,) = cases
        result = (keras_worker if args.worker == "keras" else nt_worker)(case, args.repeats, args.out)
        result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    import numpy as np

    if args.nt_python and not pathlib.Path(args.nt_python).exists():
        print(f"--nt-python {args.nt_python} does not exist: run benchmarks/make_nt_env.sh", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for case in cases:
            ours = run_worker(sys.executable, "keras", case, args.repeats, directory, args.timeout)
            theirs = run_worker(args.nt_python, "nt", case, args.repeats, directory, args.timeout) if args.nt_python else None
            difference = None
            if theirs is not None and "error" not in ours and "error" not in theirs:
                a = np.load(pathlib.Path(directory) / f"keras_{case}.npz")
                b = np.load(pathlib.Path(directory) / f"nt_{case}.npz")
                difference = max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in ("nngp", "ntk"))
            rows.append((case, ours, theirs, difference))
            print(json.dumps({"case": case, "keras_ntk": ours, "neural_tangents": theirs,
                              "max_relative_difference": difference}), flush=True)

    print(f"\n{'case':<16}{'keras-ntk s':>12}{'first s':>9}{'peak RSS MB':>13}{'entries/pair':>14}"
          f"{'NT s':>9}{'NT first s':>11}{'NT RSS MB':>11}{'NT/ours':>9}{'max rel diff':>14}")
    for case, ours, theirs, difference in rows:
        if "error" in ours:
            print(f"{case:<16} keras-ntk failed: {ours['error']}")
            continue
        line = (f"{case:<16}{ours['median_s']:>12.3f}{ours['first_call_s']:>9.2f}{ours['max_rss_mb']:>13.0f}"
                f"{ours['total_entries']:>14d}")
        if theirs and "error" not in theirs:
            line += (f"{theirs['median_s']:>9.3f}{theirs['first_call_s']:>11.2f}{theirs['max_rss_mb']:>11.0f}"
                     f"{theirs['median_s'] / ours['median_s']:>9.2f}{difference:>14.1e}")
        elif theirs:
            line += f"   neural-tangents failed: {theirs['error']}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
