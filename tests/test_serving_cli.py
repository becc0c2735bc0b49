"""`keras-ntk export`, `keras-ntk serve` (a real process, stopped by SIGTERM) and `keras-ntk query`."""

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk import cli
from keras_ntk.predictive import Laplace
from keras_ntk.serving.client import Client


def _lines(stream):
    lines = queue.Queue()

    def read():
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _run(capsys, *argv):
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow  # 15 s of real processes; the servicer, client and export tests stay in make test
def test_export_serve_query_and_sigterm(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1).astype(np.float32)
    x_test = rng.normal(size=(4, 3)).astype(np.float32)
    model = keras_ntk.models.mlp(8, 1, 2, input_shape=(3,))
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.save(tmp_path / "x_test.npy", x_test)
    base = tmp_path / "models"

    code, out, _ = _run(
        capsys, "export", "--base-dir", base, "--name", "reg", "--model", tmp_path / "model.keras",
        "--data", tmp_path / "train.npz", "--structure", "diag", "--prior-precision", 0.5, "--noise-variance", 0.1,
    )
    assert code == 0 and f"exported {base / 'reg' / '1'}" in out
    reference = Laplace(model, "regression", structure="diag", prior_precision=0.5, noise_variance=0.1).fit((x, y))
    reference.save(tmp_path / "saved")
    code, out, _ = _run(capsys, "export", "--base-dir", base, "--name", "reg", "--from-dir", tmp_path / "saved")
    assert code == 0 and f"exported {base / 'reg' / '2'}" in out

    server = subprocess.Popen(
        [sys.executable, "-m", "keras_ntk.cli", "serve", "--model-dir", str(base), "--port", "0", "--poll-interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = _lines(server.stdout)
        banner = lines.get(timeout=120)
        target = re.search(r"listening on (127\.0\.0\.1:\d+)", banner).group(1)
        with Client(target) as client:
            for _ in range(2400):
                states = [v["state"] for v in client.list_models().get("reg", {}).get("versions", [])]
                if states == ["AVAILABLE", "AVAILABLE"]:
                    break
                time.sleep(0.05)
            assert states == ["AVAILABLE", "AVAILABLE"]

        expected = reference.predict(x_test)
        for version in (1, 2):
            code, out, _ = _run(capsys, "query", "--target", target, "predict", "reg", "--version", version, "--input", tmp_path / "x_test.npy")
            answer = json.loads(out)
            assert code == 0 and answer["version"] == version
            np.testing.assert_allclose(answer["mean"], expected.mean().numpy(), rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(answer["variance"], expected.variance().numpy(), rtol=1e-6, atol=1e-9)

        code, out, _ = _run(
            capsys, "query", "--target", target, "kernel", "reg", "--x1", tmp_path / "x_test.npy",
            "--kernel-output", "trace", "--output", tmp_path / "kernel.npz",
        )
        assert code == 0 and json.loads(out)["arrays"] == {"kernel": [4, 4]}
        with np.load(tmp_path / "kernel.npz") as saved:
            np.testing.assert_allclose(
                saved["kernel"], keras_ntk.empirical_ntk(model, x_test, output="trace").numpy(), rtol=1e-5
            )
        code, out, _ = _run(capsys, "query", "--target", target, "metadata", "reg")
        meta = json.loads(out)
        assert (meta["version"], meta["structure"], meta["parameter_count"]) == (2, "diag", 3 * 8 + 8 + 8 * 2 + 2)
        code, out, err = _run(capsys, "query", "--target", target, "status", "nope")
        assert code == 1 and "NOT_FOUND" in err

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        rest = []
        while not lines.empty():
            rest.append(lines.get())
        assert any("SIGTERM, draining" in line for line in rest) and any("stopped" in line for line in rest)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_registering_the_serving_commands_does_not_import_tensorflow():
    code = (
        "import argparse, sys\n"
        "import keras_ntk.serving.cli\n"
        "parser = argparse.ArgumentParser()\n"
        "keras_ntk.serving.cli.add_commands(parser.add_subparsers())\n"
        "print(parser.parse_args(['serve', '--model-dir', 'd']).port, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["8500", "False"]


@pytest.mark.parametrize("argv", [["export", "--base-dir", "b", "--name", "n"], ["serve"], ["query", "predict", "m"]])
def test_missing_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and "required" in capsys.readouterr().err


# -- careless flags of `serve`: one line on stderr, exit code 2 -----------------------------
@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--port", "70000"], "--port: must be from 0 to 65535"),
        (["--port", "-1"], "--port: must be >= 0"),
        (["--max-concurrent-rpcs", "0"], "--max-concurrent-rpcs: must be >= 1"),
        (["--max-concurrent-rpcs", "-4"], "--max-concurrent-rpcs: must be >= 1"),
        (["--poll-interval", "0"], "--poll-interval: must be >= 0.01 seconds"),
        (["--poll-interval", "-1"], "--poll-interval: must be >= 0.01 seconds"),
        (["--client-timeout", "0"], "--client-timeout: must be >= 0.001 seconds"),
        (["--grace", "-1"], "--grace: must be >= 0"),
        (["--batch-wait-ms", "-5"], "--batch-wait-ms: must be >= 0"),
        (["--max-batch-examples", "0"], "--max-batch-examples: must be >= 1"),
        (["--max-workers", "0"], "--max-workers: must be >= 1"),
        (["--large-workers", "-1"], "--large-workers: must be >= 1"),
        (["--tf-threads", "-2"], "--tf-threads: must be >= 0"),
        (["--max-workers", "many"], "--max-workers: expected an integer"),
        (["--log-level", "LOUD"], "--log-level: expected DEBUG"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--host", "0.0.0.0"], "without TLS and bearer tokens"),
    ],
)
def test_careless_serve_flags_exit_2_with_one_line(flags, problem, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--model-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and problem in err, err


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    """Two self-signed certificates and keys for 127.0.0.1, made by the openssl command."""
    directory = tmp_path_factory.mktemp("tls")
    for name in ("a", "b"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=keras-ntk-test", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.pem")],
            check=True,
            capture_output=True,
        )
    (directory / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return directory


def test_bad_token_files_and_tls_files_exit_2_with_one_line(tmp_path, credentials, capsys):
    empty = tmp_path / "empty-tokens"
    empty.write_text("# no token here\n\n")
    empty.chmod(0o600)
    cases = [
        (["--token-file", str(tmp_path / "missing")], "--token-file: cannot read"),
        (["--token-file", str(empty)], "holds no token"),
        (["--tls-cert", str(credentials / "garbage.pem"), "--tls-key", str(credentials / "a.key")], "do not load together"),
        (["--tls-cert", str(credentials / "a.pem"), "--tls-key", str(credentials / "b.key")], "do not load together"),
        (["--tls-cert", str(credentials / "a.pem"), "--tls-key", str(tmp_path / "missing.key")], "--tls-key: cannot read"),
    ]
    for flags, problem in cases:
        with pytest.raises(SystemExit) as info:
            cli.main(["serve", "--model-dir", str(tmp_path), "--port", "0", *flags])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and problem in err, (flags, err)


def test_a_token_file_others_can_read_is_warned_about(tmp_path, capsys):
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token\n")
    tokens.chmod(0o644)
    with pytest.raises(SystemExit) as info:  # refused afterwards for the address, so no server starts
        cli.main(["serve", "--model-dir", str(tmp_path), "--token-file", str(tokens), "--host", "0.0.0.0"])
    warning, error = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and "readable by other users" in warning and "chmod 600" in warning
    assert "without TLS" in error and "--insecure" in error


def test_the_serve_command_itself_exits_2_on_a_bad_port(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "keras_ntk.cli", "serve", "--model-dir", str(tmp_path), "--port", "70000"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--port" in result.stderr
