"""Empirical NTK benchmark: keras-ntk against this machine's matmul rate and neural-tangents.

Cases, each with two different inputs (x2 given: what every GP or Laplace
prediction computes, Theta(X*, X)) and with x2 = None (the symmetric Gram):
  mlp-full   MLP 784-512-512-512-10, full kernel, N = M = 64
  mlp-trace  the same MLP, trace kernel, N = M = 1000
  cnn-full   3 x Conv2D(32, 3x3, same, relu), flatten, Dense(10) on 28x28x1, full, N = M = 16
  cnn-gap    Conv2D(64) x 2, global average pooling, Dense(10) on 32x32x3, full, N = M = 16
             (not in the default set)

Methods: keras-ntk's "structured", "jacobian", "ntk_vp", and "structured-xla" (the
same with NTK(jit_compile=True)). Every (case, x2, method) runs in a fresh worker process: the median of --repeats
timed calls after warm-up calls, the worker's peak resident memory (TF runtime
included), the algorithm's FLOPs as the engine plans them (NTK.plan(...).flops;
the per-layer formulas are in keras_ntk/ntk/features.py, FeatureMap.costs) over
the time, and that rate as a fraction of a 2048 x 2048 float32 matmul measured in
the same process (in a tf.function, median of 20): the fraction of this machine's
limit. With --nt-python, neural-tangents 0.6.5 implementations 1, 2, 3 run the
same weights and inputs (benchmarks/nt_reference.py in that interpreter; slow
implementations get fewer repeats and a timeout), and the table gives
keras-ntk / NT-fastest time ratios (< 1: keras-ntk is faster) against the
targets of issue #16 and the max kernel difference relative to the kernel's max.

  python benchmarks/ntk_bench.py [--cases mlp-full,mlp-trace,cnn-full] [--methods structured,structured-xla]
         [--repeats 20] [--timeout 900] [--nt-python ~/nt-venv/bin/python]
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent

MLP = {"type": "mlp", "input_shape": [784], "width": 512, "depth": 3, "output_dim": 10}
CASES = {
    "mlp-full": dict(architecture=MLP, n=64, output="full"),
    "mlp-trace": dict(architecture=MLP, n=1000, output="trace"),
    "cnn-full": dict(
        architecture={"type": "cnn", "width": 32, "depth": 3, "output_dim": 10, "kernel_size": 3,
                      "pooling": "flatten", "input_shape": [28, 28, 1]},
        n=16, output="full",
    ),
    "cnn-gap": dict(
        architecture={"type": "cnn", "width": 64, "depth": 2, "output_dim": 10, "kernel_size": 3,
                      "pooling": "global_average", "input_shape": [32, 32, 3]},
        n=16, output="full",
    ),
}
DEFAULT_CASES = "mlp-full,mlp-trace,cnn-full"
# keras-ntk time / neural-tangents' fastest time, at most (issue #16)
TARGETS = {("mlp-full", "given"): 0.8, ("cnn-full", "given"): 0.67}
TARGET_OTHERS = 0.67
TARGET_MATMUL_FRACTION = {("mlp-full", "given"): 0.75}
W_STD, B_STD = 2**0.5, 0.1


def build(architecture):
    import keras

    import keras_ntk

    keras.utils.set_random_seed(0)
    arch = architecture
    common = dict(w_std=W_STD, b_std=B_STD, input_shape=tuple(arch["input_shape"]))
    if arch["type"] == "mlp":
        return keras_ntk.models.mlp(arch["width"], arch["depth"], arch["output_dim"], **common)
    return keras_ntk.models.cnn(
        arch["width"], arch["depth"], arch["output_dim"],
        kernel_size=arch["kernel_size"], pooling=arch["pooling"], **common,
    )


def inputs(case, seed):
    import numpy as np

    shape = (case["n"], *case["architecture"]["input_shape"])
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def matmul_rate(size=2048, repeats=20):
    """FLOP/s of a float32 size x size matmul in a tf.function (median of `repeats`)."""
    import numpy as np
    import tensorflow as tf

    a = tf.random.stateless_normal((size, size), seed=(0, 0))
    product = tf.function(lambda a: tf.matmul(a, a))
    for _ in range(3):
        product(a).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times))


def worker(case_name, x2_mode, method, repeats, kernel_out):
    """Time one (case, x2, method) in this process; print a JSON line."""
    import numpy as np
    import tensorflow as tf

    import keras_ntk

    case = CASES[case_name]
    model = build(case["architecture"])
    x1 = inputs(case, 1)
    x2 = inputs(case, 2) if x2_mode == "given" else None
    xla = method.endswith("-xla")
    ntk = keras_ntk.NTK(
        model, output=case["output"], method=method.removesuffix("-xla"), jit_compile=xla, progress=False
    )
    for _ in range(3):  # warm-up: trace, compile, settle
        ntk(x1, x2).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kernel = ntk(x1, x2).numpy()
        times.append(time.perf_counter() - start)
    if kernel_out:
        np.save(kernel_out, kernel)
    plan = ntk.plan(case["n"], None if x2 is None else case["n"])
    median = float(np.median(times))
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    print(json.dumps({
        "median_s": median,
        "times_s": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops": plan.flops,
        "tiles": plan.tiles,
        "matmul_flops_per_s": matmul_rate(),
        "device": devices[0].name,
        "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
    }))


def run_worker(case_name, x2_mode, method, repeats, timeout, kernel_out=None):
    command = [sys.executable, __file__, "--worker", case_name, x2_mode, method, "--repeats", str(repeats)]
    if kernel_out:
        command += ["--kernel-out", str(kernel_out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_neural_tangents(nt_python, case_names, repeats, workdir, implementations):
    """Export weights and inputs, run nt_reference.py in the NT interpreter."""
    import numpy as np

    cases = []
    for name in case_names:
        case = CASES[name]
        model = build(case["architecture"])
        params = workdir / f"{name}_params.npz"
        np.savez(params, **{f"param_{i}": v.numpy() for i, v in enumerate(model.trainable_variables)})
        paths = {}
        for seed in (1, 2):
            paths[seed] = workdir / f"{name}_x{seed}.npy"
            np.save(paths[seed], inputs(case, seed))
        for x2_mode in ("given", "none"):
            cases.append({
                "name": f"{name}/{x2_mode}",
                "architecture": {**case["architecture"], "activation": "relu", "w_std": W_STD, "b_std": B_STD},
                "params": str(params), "x1": str(paths[1]),
                "x2": str(paths[2]) if x2_mode == "given" else None,
                "output": case["output"], "repeats": repeats, "time_budget_s": 20, "timeout_s": 60,
                "implementations": implementations,
                "kernel_out": str(workdir / f"{name}_{x2_mode}_nt_kernels.npz"),
            })
    cases_path, out_path = workdir / "cases.json", workdir / "nt_out.json"
    cases_path.write_text(json.dumps({"cases": cases}))
    subprocess.run([nt_python, str(HERE / "nt_reference.py"), str(cases_path), str(out_path)], check=True)
    return json.loads(out_path.read_text())


def _failure(error):
    """A short label for a failed neural-tangents run."""
    if error.startswith("timeout"):
        return "timeout"
    if "RESOURCE_EXHAUSTED" in error or "Out of memory" in error or "XlaRuntimeError" in error:
        return "OOM"
    return "failed"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--methods", default="structured,structured-xla")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--nt-python")
    parser.add_argument("--nt-implementations", default="1,2,3")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "X2", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--kernel-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.repeats, args.kernel_out)
        return 0
    import numpy as np

    case_names = args.cases.split(",")
    methods = args.methods.split(",")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ntk_bench_"))
    results = {}
    header = f"{'case':<10}{'x2':<7}{'method':<12}{'median ms':>10}{'GFLOP':>8}{'GFLOP/s':>9}{'matmul':>8}{'share':>7}{'peak MiB':>10}"
    print(header, flush=True)
    for name in case_names:
        for x2_mode in ("given", "none"):
            for method in methods:
                kernel_out = workdir / f"{name}_{x2_mode}_{method}_keras_ntk.npy"
                r = run_worker(name, x2_mode, method, args.repeats, args.timeout, kernel_out)
                results[name, x2_mode, method] = r
                if "error" in r:
                    print(f"{name:<10}{x2_mode:<7}{method:<12}  {r['error']}", flush=True)
                    continue
                rate = r["flops"] / r["median_s"]
                print(
                    f"{name:<10}{x2_mode:<7}{method:<12}{1e3 * r['median_s']:>10.2f}{r['flops'] / 1e9:>8.3f}"
                    f"{rate / 1e9:>9.1f}{r['matmul_flops_per_s'] / 1e9:>8.1f}{rate / r['matmul_flops_per_s']:>7.0%}"
                    f"{r['peak_rss_mib']:>10.0f}",
                    flush=True,
                )
    first = next((r for r in results.values() if "device" in r), {})
    print(f"device {first.get('device')}, TensorFloat-32 enabled: {first.get('tf32')} "
          "(keras-ntk computes in full float32 regardless, precision='highest')")
    if not args.nt_python:
        return 0
    implementations = [int(i) for i in args.nt_implementations.split(",")]
    nt = run_neural_tangents(args.nt_python, case_names, args.repeats, workdir, implementations)
    print(f"\nneural-tangents {nt['versions'].get('neural_tangents')} (jax {nt['versions'].get('jax')})")
    print(f"{'case':<10}{'x2':<7}{'NT impl: median ms':<38}{'method':<16}{'ours ms':>9}{'ours/NT':>9}{'target':>8}"
          f"{'share':>7}{'target':>8}{'max rel diff':>14}")
    for entry in nt["cases"]:
        name, x2_mode = entry["name"].split("/")
        timings = {impl: r["median_s"] for impl, r in entry["implementations"].items() if "median_s" in r}
        listed = ", ".join(
            f"{impl}: {1e3 * r['median_s']:.1f}" if "median_s" in r else f"{impl}: {_failure(r['error'])}"
            for impl, r in entry["implementations"].items()
        )
        kernels = np.load(workdir / f"{name}_{x2_mode}_nt_kernels.npz")
        for method in methods:
            ours = results.get((name, x2_mode, method), {})
            if not timings or "median_s" not in ours:
                print(f"{name:<10}{x2_mode:<7}{listed:<38}  {method}: no ratio")
                continue
            fastest = min(timings, key=timings.get)
            ratio = ours["median_s"] / timings[fastest]
            target = TARGETS.get((name, x2_mode), TARGET_OTHERS)
            share = ours["flops"] / ours["median_s"] / ours["matmul_flops_per_s"]
            share_target = TARGET_MATMUL_FRACTION.get((name, x2_mode))
            mine = np.load(workdir / f"{name}_{x2_mode}_{method}_keras_ntk.npy")
            diff = max(np.abs(kernels[k] - mine).max() / np.abs(mine).max() for k in kernels.files)
            share_text = f"{share_target:.0%}" if share_target else "-"
            met = ratio <= target and (share_target is None or share >= share_target)
            print(
                f"{name:<10}{x2_mode:<7}{listed:<38}{method:<16}{1e3 * ours['median_s']:>9.2f}{ratio:>8.2f}x"
                f"{target:>7.2f}x{share:>7.0%}{share_text:>8}{diff:>14.1e}  {'met' if met else 'NOT MET'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
