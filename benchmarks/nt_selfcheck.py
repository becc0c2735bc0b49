"""Check benchmarks/nt_reference.py against a float64 numpy NTK on tiny networks.

Run inside the neural-tangents interpreter:  NT_PYTHON benchmarks/nt_selfcheck.py

Writes tiny mlp / cnn cases with random parameters, runs nt_reference.py on them
and compares each implementation's kernel with J(x1) J(x2)^T, where J is the
central finite-difference Jacobian of a plain numpy forward pass. Exits non-zero
if a relative error max|nt - ref| / max|ref| exceeds 1e-4.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

TOLERANCE = 1e-4
ACTIVATIONS = {"relu": lambda z: np.maximum(z, 0.0), "erf": np.vectorize(math.erf),
               "identity": lambda z: z}


def conv_same(x, w):
    """Stride-1 'SAME' convolution: x (N, H, W, C), w (kh, kw, C, O) -> (N, H, W, O)."""
    kh, kw = w.shape[:2]
    pad = [(0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)]
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad), (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", windows, w)


def forward(arch, params, x):
    """Network output (N, output_dim) in float64; params listed in npz order."""
    act, w_std, b_std = ACTIVATIONS[arch["activation"]], arch["w_std"], arch["b_std"]
    params = iter(params)
    a = x.reshape(len(x), -1) if arch["type"] == "mlp" else x
    for _ in range(arch["depth"]):
        w, b = next(params), next(params)
        fan_in = np.prod(w.shape[:-1])
        z = a @ w if arch["type"] == "mlp" else conv_same(a, w)
        a = act(w_std / math.sqrt(fan_in) * z + b_std * b)
    if arch["type"] == "cnn":
        a = a.mean(axis=(1, 2)) if arch["pooling"] == "global_average" else a.reshape(len(a), -1)
    w, b = next(params), next(params)
    return w_std / math.sqrt(w.shape[0]) * a @ w + b_std * b


def jacobian(arch, params, x, h=1e-5):
    """d f(x) / d params by central differences: (N, K, P), P = total parameter count."""
    flat = np.concatenate([p.ravel() for p in params])
    splits = np.cumsum([p.size for p in params])[:-1]

    def f(theta):
        pieces = np.split(theta, splits)
        return forward(arch, [q.reshape(p.shape) for q, p in zip(pieces, params)], x)

    columns = []
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = h
        columns.append((f(flat + step) - f(flat - step)) / (2 * h))
    return np.stack(columns, axis=-1)


def random_params(arch, rng):
    """Parameters in npz order: W_0, b_0, ..., W_readout, b_readout (float64)."""
    mlp, width = arch["type"] == "mlp", arch["width"]
    fan_in = int(np.prod(arch["input_shape"])) if mlp else arch["input_shape"][-1]
    shapes = []
    for _ in range(arch["depth"]):
        k = arch.get("kernel_size")
        shapes += [(fan_in, width) if mlp else (k, k, fan_in, width), (width,)]
        fan_in = width
    if arch["type"] == "cnn" and arch["pooling"] == "flatten":
        fan_in = int(np.prod(arch["input_shape"][:2])) * arch["width"]
    shapes += [(fan_in, arch["output_dim"]), (arch["output_dim"],)]
    return [rng.standard_normal(s) for s in shapes]


def make_cases(tmp, rng):
    """Write tiny cases to ``tmp``; return (cases list, {name: reference kernel})."""
    base = {"width": 7, "depth": 2, "output_dim": 3, "w_std": math.sqrt(2.0), "b_std": 0.5}
    mlp = dict(base, type="mlp", input_shape=[5], activation="relu")
    cnn = dict(base, type="cnn", input_shape=[6, 6, 2], width=3, kernel_size=3, activation="relu")
    specs = [("mlp_relu", mlp, "full", True), ("mlp_relu", mlp, "trace", False),
             ("mlp_erf", dict(mlp, activation="erf"), "full", False)]
    for pooling in ("global_average", "flatten"):
        specs += [(f"cnn_{pooling}", dict(cnn, pooling=pooling), "full", True),
                  (f"cnn_{pooling}", dict(cnn, pooling=pooling), "trace", False)]
    cases, references = [], {}
    for stem, arch, output, has_x2 in specs:
        name = f"{stem}_{output}"
        params = [p.astype(np.float32) for p in random_params(arch, rng)]
        x1 = rng.standard_normal((3, *arch["input_shape"])).astype(np.float32)
        x2 = rng.standard_normal((2, *arch["input_shape"])).astype(np.float32) if has_x2 else x1
        prefix = os.path.join(tmp, name)
        np.savez(f"{prefix}_params.npz", **{f"param_{i}": p for i, p in enumerate(params)})
        np.save(f"{prefix}_x1.npy", x1)
        if has_x2:
            np.save(f"{prefix}_x2.npy", x2)
        cases.append({"name": name, "architecture": arch, "params": f"{prefix}_params.npz",
                      "x1": f"{prefix}_x1.npy", "x2": f"{prefix}_x2.npy" if has_x2 else None,
                      "output": output, "repeats": 1, "kernel_out": f"{prefix}_kernels.npz"})
        params64 = [p.astype(np.float64) for p in params]
        j1 = jacobian(arch, params64, x1.astype(np.float64))
        j2 = jacobian(arch, params64, x2.astype(np.float64))
        full = np.einsum("akp,blp->abkl", j1, j2)
        references[name] = full if output == "full" else np.einsum("abkk->ab", full) / j1.shape[1]
    return cases, references


def main():
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        cases, references = make_cases(tmp, rng)
        cases_path, out_path = os.path.join(tmp, "cases.json"), os.path.join(tmp, "out.json")
        with open(cases_path, "w") as f:
            json.dump({"cases": cases}, f)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nt_reference.py")
        subprocess.run([sys.executable, script, cases_path, out_path], check=True)
        with open(out_path) as f:
            out = json.load(f)
        worst = 0.0
        for case, result in zip(cases, out["cases"]):
            ref = references[case["name"]]
            with np.load(case["kernel_out"]) as kernels:
                for impl in ("1", "2", "3"):
                    if "error" in result["implementations"][impl]:
                        print(f"{case['name']} impl {impl}: {result['implementations'][impl]}")
                        worst = math.inf
                        continue
                    k = kernels[f"impl_{impl}"]
                    assert k.shape == ref.shape, (case["name"], impl, k.shape, ref.shape)
                    err = np.abs(k - ref).max() / np.abs(ref).max()
                    worst = max(worst, err)
                    print(f"{case['name']:<24} impl {impl}  shape {k.shape}  rel err {err:.2e}")
    print(f"max relative error {worst:.2e} (tolerance {TOLERANCE:.0e})", out["versions"])
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
