"""Reference empirical NTKs and timings from neural-tangents 0.6.5.

Runs inside the neural-tangents interpreter made by benchmarks/make_nt_env.sh
and imports only numpy, jax, neural_tangents and the stdlib:

    NT_PYTHON benchmarks/nt_reference.py CASES.json OUT.json

For every case and every implementation 1, 2, 3 (JACOBIAN_CONTRACTION,
NTK_VECTOR_PRODUCTS, STRUCTURED_DERIVATIVES) the jitted
``nt.empirical_ntk_fn(apply_fn, trace_axes, vmap_axes=0, implementation=i)`` is
warmed up once and then timed ``repeats`` times (fewer, at least 3, when the
case gives ``time_budget_s`` and the warm-up call shows they would exceed it;
a case's ``implementations`` list restricts which run, ``timeout_s`` bounds
each). Each (case, implementation)
runs in a child process of its own, so ``max_rss_mb`` (the child's peak RSS,
including the ~0.6 GB that importing neural_tangents/tensorflow costs, see
``rss_before_mb``) belongs to that implementation alone. Each child's address
space is capped (RLIMIT_AS) at $NT_MEMORY_LIMIT_MB, default 75% of physical
memory, so that an implementation too big for the machine fails with XLA's
RESOURCE_EXHAUSTED instead of pushing the machine into the OOM killer.

Kernels are written to each case's ``kernel_out`` as ``impl_1``, ``impl_2``,
``impl_3`` (float32): shape (N, M, K, K) for ``"full"``, and (N, M) for
``"trace"``, where "trace" is the MEAN over the K outputs (keras-ntk's
convention). NT's ``trace_axes=(-1,)`` already returns that mean (it divides
the trace by K itself), so its result is used as is. A failed implementation
is recorded as {"error": ...} in OUT.json and left out of ``kernel_out``.

jax and neural_tangents (which imports tensorflow) are imported inside the
functions that use them, so the parent process stays light.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import numpy as np

IMPLEMENTATIONS = {1: "JACOBIAN_CONTRACTION", 2: "NTK_VECTOR_PRODUCTS",
                   3: "STRUCTURED_DERIVATIVES"}


def memory_limit_mb():
    """Per-child address-space cap in MiB: $NT_MEMORY_LIMIT_MB, else 75% of RAM."""
    ram_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    return int(os.environ.get("NT_MEMORY_LIMIT_MB", 0.75 * ram_mb))


def build_network(arch):
    """Return the stax ``(init_fn, apply_fn)`` of an architecture dict.

    Inputs are (N, *arch["input_shape"]) (NHWC for "cnn"), outputs (N, output_dim).
    Every Dense / Conv uses NT's ``parameterization="ntk"``:
    z = (w_std / sqrt(fan_in)) * W a + b_std * b.
    """
    from neural_tangents import stax

    w_std, b_std = arch["w_std"], arch["b_std"]
    act = {"relu": stax.Relu, "erf": stax.Erf, "identity": stax.Identity}[arch["activation"]]
    if arch["type"] == "mlp":
        layers = [stax.Flatten()]
        for _ in range(arch["depth"]):
            layers += [stax.Dense(arch["width"], W_std=w_std, b_std=b_std), act()]
    elif arch["type"] == "cnn":
        k = arch["kernel_size"]
        layers = []
        for _ in range(arch["depth"]):
            layers += [stax.Conv(arch["width"], (k, k), strides=(1, 1), padding="SAME",
                                 W_std=w_std, b_std=b_std,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC")),
                       act()]
        pool = {"global_average": stax.GlobalAvgPool, "flatten": stax.Flatten}[arch["pooling"]]
        layers.append(pool())
    else:
        raise ValueError(f"unknown architecture type {arch['type']!r}")
    layers.append(stax.Dense(arch["output_dim"], W_std=w_std, b_std=b_std))
    init_fn, apply_fn, _ = stax.serial(*layers)
    return init_fn, apply_fn


def load_params(arch, init_fn, npz_path):
    """Fill NT's parameter pytree with the arrays param_0, param_1, ... of ``npz_path``.

    The npz order is W_0, b_0, W_1, b_1, ..., W_readout, b_readout, with Dense W
    (fan_in, out), Conv W HWIO (kh, kw, in, out) and biases (out,). NT stores the
    same W layouts; its biases are (1, out) for Dense and (1, 1, 1, out) for Conv,
    so 1-D biases are reshaped into those.
    """
    import jax

    _, template = init_fn(jax.random.PRNGKey(0), (1, *arch["input_shape"]))
    leaves, treedef = jax.tree_util.tree_flatten(template)
    with np.load(npz_path) as npz:
        arrays = [npz[f"param_{i}"] for i in range(len(npz.files))]
    if len(arrays) != len(leaves):
        raise ValueError(f"{npz_path}: {len(arrays)} arrays, the network has {len(leaves)}")
    filled = []
    for i, (a, leaf) in enumerate(zip(arrays, leaves)):
        if a.shape != leaf.shape and not (a.ndim == 1 and a.size == leaf.size):
            raise ValueError(f"param_{i}: shape {a.shape}, neural-tangents expects {leaf.shape}")
        filled.append(np.asarray(a, np.float32).reshape(leaf.shape))
    return jax.tree_util.tree_unflatten(treedef, filled)


def _rss_mb():
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(case, implementation):
    """Time one implementation on one case; return (record dict, kernel array)."""
    import jax
    import neural_tangents as nt

    arch = case["architecture"]
    init_fn, apply_fn = build_network(arch)
    params = load_params(arch, init_fn, case["params"])
    x1 = np.load(case["x1"]).astype(np.float32)
    x2 = None if case.get("x2") is None else np.load(case["x2"]).astype(np.float32)
    trace_axes = {"full": (), "trace": (-1,)}[case["output"]]
    kernel_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, vmap_axes=0,
                                            implementation=implementation))
    x1, x2, params = jax.device_put((x1, x2, params))

    rss_before = _rss_mb()
    start = time.perf_counter()
    kernel = jax.block_until_ready(kernel_fn(x1, x2, params))
    first_call = time.perf_counter() - start
    times = []
    repeats = case.get("repeats", 5)
    if "time_budget_s" in case:  # slow implementations: fewer repeats, at least 3
        repeats = max(3, min(repeats, int(case["time_budget_s"] / max(first_call, 1e-9))))
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(kernel_fn(x1, x2, params))
        times.append(time.perf_counter() - start)
    record = {"median_s": statistics.median(times), "times_s": times,
              "first_call_s": first_call, "rss_before_mb": rss_before,
              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return record, np.asarray(kernel, np.float32)


def case_timeout_s(cases_path, index):
    """A case's per-implementation timeout in seconds (its "timeout_s", default none)."""
    with open(cases_path) as f:
        return json.load(f)["cases"][int(index)].get("timeout_s")


def _run_child(cases_path, index, implementation, tmp):
    """Measure one (case, implementation) in a fresh interpreter; return its record."""
    record_path = os.path.join(tmp, "record.json")
    kernel_path = os.path.join(tmp, f"impl_{implementation}.npy")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", cases_path, str(index),
           str(implementation), record_path, kernel_path]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=case_timeout_s(cases_path, index))
    except subprocess.TimeoutExpired as error:
        return {"error": f"timeout after {error.timeout:.0f} s"}
    if proc.returncode < 0:
        return {"error": f"killed by signal {-proc.returncode} (out of memory?)"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        return {"error": f"exit {proc.returncode}: {lines[-1]}"}
    with open(record_path) as f:
        return json.load(f)


def main(cases_path, out_path):
    with open(cases_path) as f:
        cases = json.load(f)["cases"]
    results = []
    for index, case in enumerate(cases):
        impls, kernels = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, name in IMPLEMENTATIONS.items():
                if i not in case.get("implementations", IMPLEMENTATIONS):
                    continue
                rec = _run_child(cases_path, index, i, tmp)
                impls[str(i)] = rec
                if "error" in rec:
                    msg = f"ERROR {rec['error']}"
                else:
                    kernels[f"impl_{i}"] = np.load(os.path.join(tmp, f"impl_{i}.npy"))
                    msg = f"median {rec['median_s']:.4f} s, max_rss {rec['max_rss_mb']:.0f} MB"
                print(f"[nt_reference] {case['name']} impl {i} ({name}): {msg}",
                      file=sys.stderr, flush=True)
        os.makedirs(os.path.dirname(case["kernel_out"]) or ".", exist_ok=True)
        np.savez(case["kernel_out"], **kernels)
        results.append({"name": case["name"], "implementations": impls})
    versions = {key: metadata.version(dist) for key, dist in
                [("neural_tangents", "neural-tangents"), ("jax", "jax"),
                 ("jaxlib", "jaxlib"), ("numpy", "numpy")]}
    with open(out_path, "w") as f:
        json.dump({"cases": results, "versions": versions,
                   "memory_limit_mb": memory_limit_mb()}, f, indent=2)


def _child_main(cases_path, index, implementation, record_path, kernel_path):
    limit = memory_limit_mb() * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with open(cases_path) as f:
        case = json.load(f)["cases"][int(index)]
    try:
        record, kernel = measure(case, int(implementation))
        np.save(kernel_path, kernel)
    except Exception as e:  # e.g. XLA's "RESOURCE_EXHAUSTED: Out of memory ..."
        record = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"}
    with open(record_path, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        _child_main(*sys.argv[2:])
    elif len(sys.argv) == 3:
        main(*sys.argv[1:])
    else:
        sys.exit(__doc__)
