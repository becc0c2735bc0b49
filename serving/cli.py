"""`keras-ntk` subcommands of the gRPC service: export, serve, query.

Imports stay light (standard library only) so that registering the commands does not load
TensorFlow; each handler imports what it needs.
"""

import argparse
import json
import logging
import sys

DEFAULT_TARGET = "127.0.0.1:8500"


def add_commands(commands):
    """Register the serving subcommands on an argparse subparsers object."""
    _add_export(commands)
    _add_serve(commands)
    _add_query(commands)


# -- export ------------------------------------------------------------------------------
def _add_export(commands):
    p = commands.add_parser(
        "export",
        help="export a trained model and its fitted posterior as BASE/NAME/VERSION/ for `serve`",
        description="Write BASE/NAME/VERSION/ (model.keras, posterior.npz, metadata.json) atomically. "
        "Either copy a directory written by Laplace.save / NTKGP.save (--from-dir), or fit a "
        "posterior to a saved Keras model (--model) on training data (--data, an .npz with x and y).",
    )
    p.add_argument("--base-dir", required=True, help="the server's model base directory")
    p.add_argument("--name", required=True, help="model name (letters, digits, _ - .)")
    p.add_argument("--version", type=int, default=None, help="positive int (default: next free)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dir", help="a directory written by Laplace.save or NTKGP.save")
    source.add_argument("--model", help="a .keras file of the trained model (loaded in safe mode)")
    p.add_argument("--data", help="with --model: .npz holding training inputs x (N, ...) and targets y")
    p.add_argument("--posterior", choices=("laplace", "gp"), default="laplace")
    p.add_argument("--likelihood", choices=("regression", "classification"), default="regression")
    p.add_argument("--structure", default="kron", help="Laplace structure: full, diag, last_layer, kron, function_space")
    p.add_argument("--prior-precision", type=float, default=1.0)
    p.add_argument("--noise-variance", type=float, default=1.0)
    p.add_argument("--optimize-steps", type=int, default=0, help="Laplace: evidence-maximization steps (0: none)")
    p.add_argument("--subset-size", type=int, default=None, help="Laplace function_space: training subset")
    p.add_argument("--gp-output", choices=("independent", "full"), default="independent")
    p.set_defaults(handler=_export)


def _export(args):
    import keras
    import numpy as np

    from keras_ntk.predictive import NTKGP, Laplace
    from . import export

    if args.from_dir:
        path = export.export_saved(args.from_dir, args.base_dir, args.name, args.version)
    else:
        if not args.data:
            raise SystemExit("keras-ntk export: --model needs --data (an .npz with arrays x and y).")
        with np.load(args.data, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise SystemExit(f"keras-ntk export: {args.data} must hold arrays 'x' and 'y', has {data.files}.")
            x, y = data["x"], data["y"]
        model = keras.models.load_model(args.model, safe_mode=True, compile=False)
        if args.posterior == "gp":
            posterior = NTKGP.empirical(model, x, y, args.noise_variance, output=args.gp_output)
        else:
            posterior = Laplace(
                model,
                args.likelihood,
                structure=args.structure,
                prior_precision=args.prior_precision,
                noise_variance=args.noise_variance,
                subset_size=args.subset_size,
            ).fit((x, y))
            if args.optimize_steps:
                result = posterior.optimize_hyperparameters(steps=args.optimize_steps)
                print(f"evidence maximization: {json.dumps(result)}")
        path = export.export(posterior, args.base_dir, args.name, args.version)
    print(f"exported {path}")


# -- serve -------------------------------------------------------------------------------
def _at_least(minimum, kind=int, note=""):
    """An argparse type: a number of `kind` >= minimum (one-line error otherwise)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}{note}, got {text}")
        return value

    return parse


def _port(text):
    value = _at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535 (0: any free port), got {text}")
    return value


def _log_level(text):
    if not isinstance(logging.getLevelName(text.upper()), int):
        raise argparse.ArgumentTypeError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return text.upper()


def _one_line_errors(parser):
    """Usage errors of `parser` print one line (no usage block) and exit with code 2."""

    def error(message):
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    parser.error = error
    return parser


def _add_serve(commands):
    p = _one_line_errors(commands.add_parser(
        "serve",
        help="serve the exported models of a base directory over gRPC",
        description="Serve every version under --model-dir (BASE/NAME/VERSION/), hot-loading new "
        "versions. SIGTERM or Ctrl-C drains in-flight calls (--grace seconds) and exits. Bad settings "
        "are refused at start with one line and exit code 2.",
    ))
    p.add_argument("--model-dir", required=True, help="model base directory (may be empty)")
    p.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind (default 127.0.0.1, loopback only; another address needs --tls-cert/--tls-key "
        "and --token-file, or --insecure)",
    )
    p.add_argument("--port", type=_port, default=8500, help="port (0: any free port, printed)")
    p.add_argument("--max-workers", type=_at_least(1), default=8, help="threads running small requests")
    p.add_argument("--large-workers", type=_at_least(1), default=2, help="threads running large requests")
    p.add_argument(
        "--max-concurrent-rpcs", type=_at_least(1), default=256,
        help="calls admitted at once (more: RESOURCE_EXHAUSTED at once; health is not counted)",
    )
    p.add_argument(
        "--poll-interval", type=_at_least(0.01, float, " seconds"), default=1.0,
        help="seconds between scans of --model-dir (>= 0.01)",
    )
    p.add_argument(
        "--client-timeout", type=_at_least(0.001, float, " seconds"), default=10.0,
        help="seconds a client may take to send its request or take the next message of an answer",
    )
    p.add_argument("--token-file", help="file of accepted bearer tokens, one per line (default: no auth)")
    p.add_argument("--tls-cert", help="PEM server certificate chain (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument(
        "--insecure", action="store_true",
        help="allow a --host beyond loopback without both TLS and bearer tokens",
    )
    p.add_argument(
        "--reflection", action=argparse.BooleanOptionalAction, default=None,
        help="serve gRPC reflection (default: only when --host is loopback)",
    )
    p.add_argument("--no-batching", action="store_true", help="do not batch concurrent predictions")
    p.add_argument("--batch-wait-ms", type=_at_least(0, float), default=0.0, help="batcher: wait for more requests (ms)")
    p.add_argument("--max-batch-examples", type=_at_least(1), default=256)
    p.add_argument(
        "--grace", type=_at_least(0, float), default=10.0, help="seconds to drain in-flight calls on shutdown"
    )
    p.add_argument(
        "--tf-threads",
        type=_at_least(0),
        default=0,
        help="TensorFlow intra- and inter-op threads (0: TensorFlow's default). Requests run in "
        "parallel on the worker threads, so 1 often gives the lowest latency for small models",
    )
    p.add_argument("--log-level", type=_log_level, default="INFO")
    p.set_defaults(handler=_serve)


def set_tf_threads(count):
    """Set TensorFlow's intra- and inter-op thread pools (before any op runs); 0 keeps the defaults."""
    if count < 0:
        raise ValueError(f"TensorFlow threads must be >= 0, got {count}.")
    if count:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(count)


def _refuse(message):
    print(f"keras-ntk serve: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_file(path, flag):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        _refuse(f"{flag}: cannot read {path}: {error.strerror or error}")


def _serve(args):
    import signal
    import threading

    from . import auth

    tokens = None
    if args.token_file:
        try:
            tokens = auth.read_tokens(args.token_file)
        except ValueError as error:
            _refuse(f"--token-file: {error}")
        warning = auth.exposure(args.token_file)
        if warning:
            print(f"keras-ntk serve: warning: {warning}", file=sys.stderr)
    if (args.tls_cert is None) != (args.tls_key is None):
        _refuse("--tls-cert and --tls-key go together.")
    cert = key = None
    if args.tls_cert:
        cert, key = _read_file(args.tls_cert, "--tls-cert"), _read_file(args.tls_key, "--tls-key")
    set_tf_threads(args.tf_threads)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    from .server import Server

    try:
        server = Server(
            args.model_dir,
            host=args.host,
            port=args.port,
            max_workers=args.max_workers,
            large_workers=args.large_workers,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            poll_interval=args.poll_interval,
            client_timeout=args.client_timeout,
            tokens=tokens,
            tls_cert=cert,
            tls_key=key,
            batching=not args.no_batching,
            max_batch_examples=args.max_batch_examples,
            max_batch_wait=args.batch_wait_ms / 1000.0,
            reflection=args.reflection,
            insecure=args.insecure,
        )
    except (ValueError, OSError) as error:
        _refuse(str(error))
    stop = threading.Event()
    received = []

    def on_signal(signum, frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(
        f"keras-ntk serve: listening on {server.address}{' (TLS)' if server.tls else ''}"
        f"{', bearer-token auth' if tokens else ''}; models from {args.model_dir}",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    print(f"keras-ntk serve: {received[0]}, draining in-flight calls (up to {args.grace:g} s)", flush=True)
    server.stop(args.grace)
    print("keras-ntk serve: stopped", flush=True)
    return 0


# -- query -------------------------------------------------------------------------------
def _add_query(commands):
    p = commands.add_parser(
        "query",
        help="query a keras-ntk server: list, status, metadata, predict, kernel",
        description="Query a running `keras-ntk serve`. Answers print as JSON; arrays are "
        "written to --output (.npz) when given, else printed.",
    )
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"host:port (default {DEFAULT_TARGET})")
    p.add_argument("--token-file", help="bearer token file (first token used)")
    p.add_argument("--ca-cert", help="PEM CA certificate: connect with TLS")
    p.add_argument("--server-name", help="name in the server certificate, if not the host")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of the call, seconds")
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="models and their versions")
    for action, text in (("status", "version states of a model"), ("metadata", "shapes, likelihood, posterior")):
        _model_args(actions.add_parser(action, help=text))
    q = _model_args(actions.add_parser("predict", help="predictive mean and uncertainty"))
    q.add_argument("--input", required=True, help=".npy file of inputs (N, ...)")
    q.add_argument("--uncertainty", choices=("none", "variance", "joint"), default="variance")
    q.add_argument("--observation-noise", action="store_true")
    q.add_argument("--link", choices=("probit", "mc"), default=None, help="classification link")
    q.add_argument("--samples", type=int, default=0)
    q.add_argument("--seed", type=int, default=None)
    q.add_argument("--output", help=".npz file for the arrays")
    q = _model_args(actions.add_parser("kernel", help="empirical NTK, streamed in tiles"))
    q.add_argument("--x1", required=True, help=".npy file (N, ...)")
    q.add_argument("--x2", help=".npy file (M, ...); default x1")
    q.add_argument("--kernel-output", choices=("full", "trace", "diagonal"), default="full")
    q.add_argument("--per-layer", action="store_true")
    q.add_argument("--output", help=".npz file for the kernel")
    p.set_defaults(handler=_query)


def _model_args(p):
    p.add_argument("name", help="model name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int)
    which.add_argument("--label")
    return p


def _arrays_out(arrays, output, summary):
    import numpy as np

    arrays = {k: v for k, v in arrays.items() if v is not None}
    if output:
        np.savez(output, **arrays)
        summary["output"] = output
        summary["arrays"] = {k: list(v.shape) for k, v in arrays.items()}
    else:
        summary.update({k: v.tolist() for k, v in arrays.items()})
    return summary


def _query(args):
    import grpc
    import numpy as np

    from . import auth
    from .client import Client

    token = auth.read_tokens(args.token_file)[0] if args.token_file else None
    ca = None
    if args.ca_cert:
        with open(args.ca_cert, "rb") as f:
            ca = f.read()
    with Client(args.target, token=token, root_certificates=ca, server_name=args.server_name, timeout=args.timeout) as client:
        try:
            if args.action == "list":
                result = client.list_models()
            elif args.action == "status":
                result = client.status(args.name, args.version, args.label)
            elif args.action == "metadata":
                result = client.metadata(args.name, args.version, args.label)
                result["metadata"] = json.loads(result.pop("metadata_json"))
            elif args.action == "predict":
                p = client.predict(
                    args.name,
                    np.load(args.input, allow_pickle=False),
                    version=args.version,
                    label=args.label,
                    uncertainty=args.uncertainty,
                    observation_noise=args.observation_noise,
                    link=args.link,
                    samples=args.samples,
                    seed=args.seed,
                )
                summary = {"name": p.name, "version": p.version, "jitter": p.jitter}
                if p.probabilities is not None and args.link == "mc":
                    summary["seed"] = p.seed
                arrays = {"mean": p.mean, "variance": p.variance, "covariance": p.covariance, "probabilities": p.probabilities}
                result = _arrays_out(arrays, args.output, summary)
            else:
                x2 = np.load(args.x2, allow_pickle=False) if args.x2 else None
                kernel = client.kernel(
                    args.name,
                    np.load(args.x1, allow_pickle=False),
                    x2,
                    output=args.kernel_output,
                    per_layer=args.per_layer,
                    version=args.version,
                    label=args.label,
                )
                arrays = kernel if args.per_layer else {"kernel": kernel}
                result = _arrays_out(arrays, args.output, {"name": args.name})
        except grpc.RpcError as error:
            print(f"keras-ntk query: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0
