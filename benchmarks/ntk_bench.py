"""Empirical NTK benchmark: keras-ntk's methods, and neural-tangents on the same weights.

Cases (issue #3):
  a  MLP 784-512-512-512-10, full kernel, N = M = 64
  b  the same MLP, trace kernel, N = M = 1000
  c1 CNN (64 channels, 2 conv layers, GAP) on 28x28x1, full kernel, N = M = 16, 10 outputs
  c2 the same CNN on 32x32x3

Every (case, method) runs in a fresh worker process: the median of --repeats timed
runs after one warm-up, the worker's peak resident memory (TF runtime included),
and "J-equivalent GFLOP/s" = 2 N M K^2 P / t for full kernels (2 N M K P / t for
trace), the dense Jacobian-contraction count over time. With --nt-python, the
same models, weights and inputs run under neural-tangents implementations 1, 2, 3
(benchmarks/nt_reference.py in that interpreter); the table gives time ratios
(NT fastest / keras-ntk structured; > 1 means keras-ntk is faster) and the max
kernel difference relative to the kernel's max.

  python benchmarks/ntk_bench.py [--cases a,b,c1,c2] [--methods structured,jacobian,ntk_vp]
         [--repeats 5] [--timeout 900] [--nt-python ~/nt-venv/bin/python]
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
CNN = {"type": "cnn", "width": 64, "depth": 2, "output_dim": 10, "kernel_size": 3, "pooling": "global_average"}
CASES = {
    "a": dict(architecture=MLP, n=64, output="full"),
    "b": dict(architecture=MLP, n=1000, output="trace"),
    "c1": dict(architecture={**CNN, "input_shape": [28, 28, 1]}, n=16, output="full"),
    "c2": dict(architecture={**CNN, "input_shape": [32, 32, 3]}, n=16, output="full"),
}
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


def inputs(case):
    import numpy as np

    shape = (case["n"], *case["architecture"]["input_shape"])
    return np.random.default_rng(1).normal(size=shape).astype(np.float32)


def worker(case_name, method, repeats, kernel_out):
    """Time one (case, method) in this process; print a JSON line."""
    import numpy as np

    import keras_ntk

    case = CASES[case_name]
    model = build(case["architecture"])
    x = inputs(case)
    ntk = keras_ntk.NTK(model, output=case["output"], method=method, progress=False)
    ntk(x).numpy()  # warm-up: trace and compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kernel = ntk(x).numpy()
        times.append(time.perf_counter() - start)
    if kernel_out:
        np.save(kernel_out, kernel)
    params = model.count_params()
    k = case["architecture"]["output_dim"]
    flops = 2 * case["n"] ** 2 * params * (k * k if case["output"] == "full" else k)
    median = float(np.median(times))
    print(json.dumps({
        "median_s": median,
        "times_s": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gflops": flops / median / 1e9,
        "params": params,
    }))


def run_worker(case_name, method, repeats, timeout, kernel_out=None):
    command = [sys.executable, __file__, "--worker", case_name, method, "--repeats", str(repeats)]
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


def run_neural_tangents(nt_python, case_names, repeats, workdir):
    """Export weights and inputs, run nt_reference.py in the NT interpreter."""
    import numpy as np

    cases = []
    for name in case_names:
        case = CASES[name]
        model = build(case["architecture"])
        params = workdir / f"{name}_params.npz"
        np.savez(params, **{f"param_{i}": v.numpy() for i, v in enumerate(model.trainable_variables)})
        x_path = workdir / f"{name}_x.npy"
        np.save(x_path, inputs(case))
        cases.append({
            "name": name,
            "architecture": {**case["architecture"], "activation": "relu", "w_std": W_STD, "b_std": B_STD},
            "params": str(params), "x1": str(x_path), "x2": None,
            "output": case["output"], "repeats": repeats,
            "kernel_out": str(workdir / f"{name}_nt_kernels.npz"),
        })
    cases_path, out_path = workdir / "cases.json", workdir / "nt_out.json"
    cases_path.write_text(json.dumps({"cases": cases}))
    subprocess.run([nt_python, str(HERE / "nt_reference.py"), str(cases_path), str(out_path)], check=True)
    return json.loads(out_path.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b,c1,c2")
    parser.add_argument("--methods", default="structured,jacobian,ntk_vp")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--nt-python")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
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
    print(f"{'case':<5}{'method':<12}{'median s':>10}{'peak MiB':>10}{'J-eq GFLOP/s':>14}", flush=True)
    for name in case_names:
        for method in methods:
            kernel_out = workdir / f"{name}_keras_ntk.npy" if method == "structured" else None
            r = run_worker(name, method, args.repeats, args.timeout, kernel_out)
            results[(name, method)] = r
            if "error" in r:
                print(f"{name:<5}{method:<12}  {r['error']}", flush=True)
            else:
                print(f"{name:<5}{method:<12}{r['median_s']:>10.4f}{r['peak_rss_mib']:>10.0f}{r['gflops']:>14.1f}", flush=True)
    if not args.nt_python:
        return 0
    nt = run_neural_tangents(args.nt_python, case_names, args.repeats, workdir)
    print(f"\nneural-tangents {nt['versions'].get('neural_tangents')} (jax {nt['versions'].get('jax')})")
    print(f"{'case':<5}{'impl':<6}{'median s':>10}{'ratio NT/ours':>15}{'max rel diff':>14}")
    for entry in nt["cases"]:
        name = entry["name"]
        ours = results.get((name, "structured"), {})
        ours_kernel = np.load(workdir / f"{name}_keras_ntk.npy") if "median_s" in ours else None
        nt_path = workdir / f"{name}_nt_kernels.npz"
        nt_kernels = np.load(nt_path) if nt_path.exists() else {}
        for impl, r in entry["implementations"].items():
            if "error" in r:
                print(f"{name:<5}{impl:<6}  {r['error']}")
                continue
            ratio = r["median_s"] / ours["median_s"] if "median_s" in ours else float("nan")
            diff = float("nan")
            if ours_kernel is not None and f"impl_{impl}" in nt_kernels:
                diff = np.abs(nt_kernels[f"impl_{impl}"] - ours_kernel).max() / np.abs(ours_kernel).max()
            print(f"{name:<5}{impl:<6}{r['median_s']:>10.4f}{ratio:>15.2f}{diff:>14.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
