"""Regenerate the checked-in gRPC code from protos/ with grpc_tools.protoc.

    python -m keras_ntk.serving.generate_protos          # rewrite serving/v1/serving_pb2*.py(i)
    python -m keras_ntk.serving.generate_protos --check  # exit 1 when the checked-in files are stale

Run it from a source checkout: the protos live in protos/keras_ntk/serving/v1/, a
path matching the proto package, so the generated code imports
`keras_ntk.serving.v1`. The generated modules are checked in (installing needs no
protoc); grpcio-tools is a development dependency and its version, with
protobuf's, is pinned in constraints.txt, so this command reproduces them byte
for byte (tests/test_serving_protos.py checks).
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTOS = ("keras_ntk/serving/v1/serving.proto",)
CHECKED_IN = ROOT / "serving" / "v1"
GENERATED = ("serving_pb2.py", "serving_pb2.pyi", "serving_pb2_grpc.py")


def generate(out_dir):
    """Run protoc on PROTOS, writing Python modules under out_dir (mirroring protos/).

    Returns the list of generated file paths.
    """
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out_dir = pathlib.Path(out_dir)
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / p) for p in PROTOS),
    ]
    # A separate process: protoc's compiler and an imported TensorFlow's protobuf
    # runtime do not share one process safely.
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}\n{result.stderr}")
    return [out_dir / "keras_ntk" / "serving" / "v1" / name for name in GENERATED]


def stale_files():
    """Names of checked-in generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(tmp)
        return [p.name for p in fresh if (CHECKED_IN / p.name).read_bytes() != p.read_bytes()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated files: {', '.join(stale)}; run python -m keras_ntk.serving.generate_protos")
            return 1
        print("generated files are up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(tmp):
            target = CHECKED_IN / path.name
            target.write_bytes(path.read_bytes())
            print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
