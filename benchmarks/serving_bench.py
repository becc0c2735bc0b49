"""Load generator for the gRPC service: Predict with variance over loopback.

    .venv/bin/python benchmarks/serving_bench.py            # about 6 minutes
    .venv/bin/python benchmarks/serving_bench.py --quick    # about 2 minutes on an idle machine

Trains an MLP (default width 512, 2 hidden layers, 16 inputs, 1 output) on
synthetic regression data, fits a linearized Laplace (default structure "kron":
K-FAC, the structure that scales to width 512; "full" would need a P x P
precision with P = 272k parameters), exports it and starts `keras-ntk serve`
as a separate process. Then it reports, for batch sizes 1 and 64 and 1 and N
concurrent clients (threads of this process, each with its own channel):
p50 / p99 latency and throughput of Predict with variance, beside the same
computation in-process (the server's compiled predictive called directly in
this process, and the public Laplace.predict) and the overhead ratio
server / in-process, measured with alternating calls so that both see the same
load on a shared machine. It repeats N clients at batch 1 with the micro-batcher
off, and ends with a soak of N clients for --soak seconds counting errors.
Every served answer is checked against the in-process one first.

The transport floor: an echo server (the same grpc.server setup and messages of
the same size, but no model: `--echo-server`, started as its own process) shows
what any grpcio server costs per call on this machine, so the report splits the
server's latency into in-process computation + echo floor + the rest.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras_ntk  # noqa: E402
from keras_ntk.predictive import Laplace, compile_predictive  # noqa: E402
from keras_ntk.serving import export  # noqa: E402
from keras_ntk.serving.client import Client  # noqa: E402


def percentiles(latencies):
    values = np.sort(np.asarray(latencies)) * 1e3
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def build(args):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.train, args.input_dim)).astype(np.float32)
    y = np.sin(x[:, :1]) + 0.1 * rng.normal(size=(args.train, 1))
    model = keras_ntk.models.mlp(args.width, args.depth, 1, input_shape=(args.input_dim,))
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y.astype(np.float32), epochs=20, batch_size=64, verbose=0)
    laplace = Laplace(model, "regression", structure=args.structure, prior_precision=1.0, noise_variance=0.01)
    return laplace.fit((x, y)), x


def serve_echo(workers):
    """Answer every Predict at once with zero mean and variance of the request's
    batch size: a server with gRPC's per-call cost and none of the model's."""
    from concurrent import futures

    import grpc

    from keras_ntk.serving import tensors
    from keras_ntk.serving.v1 import serving_pb2 as pb
    from keras_ntk.serving.v1 import serving_pb2_grpc

    class Echo(serving_pb2_grpc.KernelServiceServicer):
        def Predict(self, request, context):
            zeros = tensors.to_proto(np.zeros((request.inputs.shape[0], 1)))
            spec = pb.ModelSpec(name=request.model_spec.name, version=1)
            return pb.PredictResponse(model_spec=spec, mean=zeros, variance=zeros)

    server = grpc.server(futures.ThreadPoolExecutor(workers))
    serving_pb2_grpc.add_KernelServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def start_echo(workers):
    command = [sys.executable, __file__, "--echo-server", "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    match = re.search(r"listening on (\S+)", process.stdout.readline())
    if not match:
        process.kill()
        raise SystemExit("the echo server did not start")
    return process, match.group(1)


def start_server(base, batching, workers, tf_threads, extra=()):
    command = [sys.executable, "-m", "keras_ntk.cli", "serve", "--model-dir", str(base), "--port", "0",
               "--max-workers", str(workers), "--tf-threads", str(tf_threads), "--log-level", "WARNING", *extra]
    if not batching:
        command.append("--no-batching")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    banner = process.stdout.readline()
    match = re.search(r"listening on (\S+?)(?:;|\s)", banner)
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {banner!r}")
    target = match.group(1)
    with Client(target) as client:
        for _ in range(6000):
            try:
                if client.status("bench")[0]["state"] == "AVAILABLE":
                    return process, target
            except Exception:
                pass
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the model did not become available")


def memory_mb(pid):
    """(resident, peak resident) MB of a process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def overload(target, clients, duration, x):
    """`clients` threads calling Predict on x for `duration` seconds while one more
    thread checks health every 20 ms. Returns ({status: count}, health latencies,
    health failures)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    counts, lock, stop = {}, threading.Lock(), threading.Event()
    health_latencies, health_failures = [], []

    def call(client):
        while not stop.is_set():
            try:
                client.predict("bench", x, timeout=30)
                outcome = "OK"
            except grpc.RpcError as error:
                outcome = error.code().name
            with lock:
                counts[outcome] = counts.get(outcome, 0) + 1

    def check():
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                    health_latencies.append(time.perf_counter() - t0)
                except grpc.RpcError as error:
                    health_failures.append(error.code().name)
                time.sleep(0.02)

    channels = [Client(target) for _ in range(clients)]
    threads = [threading.Thread(target=call, args=(c,)) for c in channels] + [threading.Thread(target=check)]
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    for c in channels:
        c.close()
    return counts, health_latencies, health_failures


def stop_server(process):
    process.terminate()
    process.wait(timeout=120)


def run_load(call, concurrency, duration, make_state=lambda: None):
    """Run call(state) in `concurrency` threads for `duration` seconds.
    Returns (latencies, completed, errors, elapsed)."""
    latencies, errors = [], []
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker():
        state = make_state()
        mine, failed = [], []
        start_barrier.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                call(state)
            except Exception as error:  # counted and reported
                failed.append(repr(error)[:200])
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)
        if hasattr(state, "close"):
            state.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration
    t0 = time.perf_counter()
    start_barrier.wait()
    for t in threads:
        t.join()
    return latencies, len(latencies), errors, time.perf_counter() - t0


def paired(local, remote, duration):
    """Alternate one in-process call and one server call for `duration` seconds, so
    that both see the same machine load; returns (local latencies, remote latencies)."""
    local_lat, remote_lat = [], []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        for call, out in ((local, local_lat), (remote, remote_lat)):
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)
    return local_lat, remote_lat


def paced(call, gap, duration):
    """Latencies of call() made one at a time with `gap` seconds of sleep in between:
    the in-process computation as a server sees it, idle while answers travel."""
    latencies = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
        time.sleep(gap)
    return latencies


def row(label, batch, concurrency, latencies, elapsed, errors):
    p50, p99 = percentiles(latencies)
    rate = len(latencies) / elapsed
    print(
        f"{label:<34} {batch:>5} {concurrency:>5} {p50:>9.3f} {p99:>9.3f} {rate:>10.1f} {rate * batch:>11.1f} {len(errors):>6}",
        flush=True,
    )
    return p50, p99, rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--input-dim", type=int, default=16)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--structure", default="kron")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8, help="server handler threads")
    parser.add_argument(
        "--tf-threads", type=int, default=1,
        help="TensorFlow threads of the server and of the in-process reference (0: TF default)",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per configuration")
    parser.add_argument("--soak", type=float, default=60.0, help="seconds of the N-client soak")
    parser.add_argument("--overload-limit", type=int, default=16, help="--max-concurrent-rpcs of the overload phase")
    parser.add_argument("--overload-clients", type=int, default=128, help="clients of the overload phase")
    parser.add_argument("--overload-batch", type=int, default=64, help="examples per Predict of the overload phase")
    parser.add_argument("--quick", action="store_true", help="3 s per configuration, 10 s soak")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        return serve_echo(args.workers)
    if args.quick:
        args.duration, args.soak = 3.0, 10.0
    batches = [int(b) for b in args.batches.split(",")]

    from keras_ntk.serving.cli import set_tf_threads

    set_tf_threads(args.tf_threads)
    laplace, x_train = build(args)
    parameters = sum(int(np.prod(v.shape)) for v in laplace.model.trainable_variables)
    predictive = compile_predictive(laplace)
    rng = np.random.default_rng(1)
    inputs = {b: rng.normal(size=(b, args.input_dim)).astype(np.float32) for b in batches}
    base = tempfile.mkdtemp(prefix="serving-bench-")
    export.export(laplace, base, "bench")
    print(
        f"MLP width {args.width}, depth {args.depth}, {args.input_dim} inputs, 1 output, {parameters} parameters; "
        f"Laplace structure {args.structure!r}; Predict with variance; TensorFlow threads "
        f"{args.tf_threads or 'default'} (server and in-process); {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    header = f"{'':<34} {'batch':>5} {'conc.':>5} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>10} {'examples/s':>11} {'errors':>6}"
    print(header)

    results = {}
    for batch in batches:
        x = inputs[batch]
        _, reference = laplace.predict(x).mean().numpy(), laplace.predict(x).variance().numpy()
        lat, _, err, el = run_load(lambda s: laplace.predict(x).variance().numpy(), 1, min(args.duration, 3.0))
        results["laplace.predict", batch, 1] = row("in-process Laplace.predict", batch, 1, lat, el, err)
        for concurrency in (1, args.concurrency):
            lat, _, err, el = run_load(lambda s: predictive.marginal(x), concurrency, args.duration)
            results["in-process", batch, concurrency] = row("in-process compiled predictive", batch, concurrency, lat, el, err)
        np.testing.assert_allclose(np.diagonal(predictive.marginal(x)[1], axis1=1, axis2=2), reference, rtol=1e-6, atol=1e-12)

    process, target = start_echo(args.workers)
    try:
        for batch in batches:
            lat, _, err, el = run_load(
                lambda client: client.predict("bench", inputs[batch]), 1, args.duration, lambda: Client(target)
            )
            results["echo", batch] = row("gRPC echo server (no model)", batch, 1, lat, el, err)
    finally:
        stop_server(process)
    for batch in batches:
        gap = results["echo", batch][0] / 1e3
        lat = paced(lambda: predictive.marginal(inputs[batch]), gap, args.duration)
        results["in-process paced", batch] = row(
            f"in-process, {gap * 1e3:.2f} ms idle between", batch, 1, lat, args.duration, []
        )

    for batching in (True, False):
        process, target = start_server(base, batching, args.workers, args.tf_threads)
        label = "gRPC server" + ("" if batching else ", batcher off")
        try:
            with Client(target) as check:
                for batch in batches:
                    got = check.predict("bench", inputs[batch]).variance
                    np.testing.assert_allclose(got, laplace.predict(inputs[batch]).variance().numpy(), rtol=1e-6, atol=1e-12)
            if batching:
                with Client(target) as client:
                    for batch in batches:
                        x = inputs[batch]
                        local, remote = paired(lambda: predictive.marginal(x), lambda: client.predict("bench", x), args.duration)
                        results["paired in-process", batch] = row("paired: in-process compiled", batch, 1, local, args.duration, [])
                        results["paired server", batch] = row("paired: gRPC server", batch, 1, remote, args.duration, [])
            for batch in batches if batching else [1]:
                x = inputs[batch]
                for concurrency in (1, args.concurrency) if batching else (args.concurrency,):
                    lat, _, err, el = run_load(
                        lambda client: client.predict("bench", x), concurrency, args.duration, lambda: Client(target)
                    )
                    results[label, batch, concurrency] = row(label, batch, concurrency, lat, el, err)
            if batching:
                soak_memory = [memory_mb(process.pid)]
                lat, _, err, el = run_load(
                    lambda client: client.predict("bench", inputs[1]), args.concurrency, args.soak, lambda: Client(target)
                )
                soak = row(f"soak {args.soak:g} s", 1, args.concurrency, lat, el, err)
                soak_errors = err
                soak_memory.append(memory_mb(process.pid))
        finally:
            stop_server(process)

    x_overload = rng.normal(size=(args.overload_batch, args.input_dim)).astype(np.float32)
    process, target = start_server(
        base, True, args.workers, args.tf_threads, ("--max-concurrent-rpcs", str(args.overload_limit))
    )
    try:
        overload_before = memory_mb(process.pid)
        counts, health_lat, health_failed = overload(target, args.overload_clients, args.soak, x_overload)
        overload_after = memory_mb(process.pid)
    finally:
        stop_server(process)

    print()
    n = args.concurrency
    p50_server = results["gRPC server", 1, 1][0]
    print(f"target: Predict with variance p50 <= 5 ms at batch 1: {p50_server:.3f} ms -> {'met' if p50_server <= 5 else 'NOT met'}")
    for batch in batches:
        server, local = results["paired server", batch], results["paired in-process", batch]
        ratio = server[0] / local[0]
        print(
            f"overhead batch {batch}, 1 client, calls alternated: p50 {server[0]:.3f} ms vs in-process compiled "
            f"{local[0]:.3f} ms = {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'}); "
            f"separate runs: {results['gRPC server', batch, 1][0]:.3f} / {results['in-process', batch, 1][0]:.3f} ms = "
            f"{results['gRPC server', batch, 1][0] / results['in-process', batch, 1][0]:.2f}x; "
            f"vs Laplace.predict {results['laplace.predict', batch, 1][0]:.3f} ms = "
            f"{server[0] / results['laplace.predict', batch, 1][0]:.2f}x"
        )
        server_1, local_1, echo = (results["gRPC server", batch, 1][0], results["in-process", batch, 1][0],
                                   results["echo", batch][0])
        idle = results["in-process paced", batch][0]
        print(
            f"floor batch {batch}: an echo server answers in {echo:.3f} ms, so no grpcio server can beat "
            f"(in-process + echo) / in-process = {(local_1 + echo) / local_1:.2f}x here. The computation itself "
            f"takes {idle:.3f} ms instead of {local_1:.3f} when idle {echo:.3f} ms between calls, as a server is; "
            f"so this server = {idle:.3f} + echo {echo:.3f} + {server_1 - idle - echo:.3f} ms of its own"
        )
        server_n, local_n = results["gRPC server", batch, n], results["in-process", batch, n]
        print(
            f"throughput batch {batch}, {n} clients: server {server_n[2]:.0f} req/s vs in-process {local_n[2]:.0f} req/s "
            f"(in-process / server = {local_n[2] / server_n[2]:.2f}x)"
        )
    on, off = results["gRPC server", 1, n], results["gRPC server, batcher off", 1, n]
    print(
        f"micro-batcher at batch 1, {n} clients: {on[2]:.0f} req/s, p50 {on[0]:.2f} ms with it; "
        f"{off[2]:.0f} req/s, p50 {off[0]:.2f} ms without ({on[2] / off[2]:.2f}x throughput)"
    )
    print(f"soak: {n} clients for {args.soak:g} s, {soak[2] * args.soak:.0f} requests, {len(soak_errors)} errors"
          + (f" (first: {soak_errors[0]})" if soak_errors else ""))
    (rss0, _), (rss1, peak1) = soak_memory
    print(f"soak memory: server resident {rss0:.0f} MB before, {rss1:.0f} MB after (peak {peak1:.0f} MB)")
    answered, shed = counts.get("OK", 0), counts.get("RESOURCE_EXHAUSTED", 0)
    others = {k: v for k, v in counts.items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
    h50, h99 = percentiles(health_lat) if health_lat else (float("nan"), float("nan"))
    print(
        f"overload: {args.overload_clients} clients, Predict batch {args.overload_batch}, a server admitting "
        f"{args.overload_limit} calls, {args.soak:g} s: {answered} answered ({answered / args.soak:.0f}/s), "
        f"{shed} shed ({shed / max(1, answered + shed):.0%}), other errors {others or 0}; health checks "
        f"{len(health_lat)} answered, {len(health_failed)} failed, p50 {h50:.2f} ms, p99 {h99:.2f} ms; server "
        f"resident {overload_before[0]:.0f} MB before, {overload_after[0]:.0f} MB after (peak {overload_after[1]:.0f} MB)"
    )
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
