"""What is served is what was exported: a version whose metadata.json lies is refused.

One exported kron Laplace (regression, 2 outputs) is version 1; versions 2, 3, ...
are byte copies of it whose metadata.json changes one entry each (likelihood,
Hessian structure, output shape, dtypes, parameter count, prior precision). A
real server on 127.0.0.1 must mark every lying version FAILED with one log line
naming the entry, and keep answering version 1 as latest, with version 1's numbers.
"""

import json
import logging
import shutil
import time

import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.predictive import Laplace, load_posterior
from keras_ntk.predictive.posterior_format import CorruptPosterior
from keras_ntk.serving import export
from keras_ntk.serving.client import Client
from keras_ntk.serving.server import Server

LIES = [
    ("likelihood", "classification"),  # "probabilities" from a regression posterior
    ("hessian_structure", "full"),
    ("structure", "full"),
    ("output_shape", [3]),
    ("output_dtype", "float64"),
    ("input_dtype", "float64"),
    ("parameters", None),  # one more than the truth, set below
    ("prior_precision", 1.0),
]


def _laplace():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    model = keras_ntk.models.mlp(8, 1, 2, input_shape=(3,))
    laplace = Laplace(model, "regression", structure="kron", prior_precision=0.5, noise_variance=0.1)
    return laplace.fit((x, np.stack([np.sin(x[:, 0]), x[:, 1]], axis=1))), x


def _lie(source, target, key, value):
    shutil.copytree(source, target)
    path = target / "metadata.json"
    metadata = json.loads(path.read_text())
    assert key in metadata and metadata[key] != value
    metadata[key] = metadata["parameters"] + 1 if value is None else value
    path.write_text(json.dumps(metadata))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    laplace, x = _laplace()
    good = export.export(laplace, base, "m")
    for version, (key, value) in enumerate(LIES, start=2):
        _lie(good, base / "m" / str(version), key, value)
    return base, laplace, x


@pytest.mark.parametrize("version,key", [(v, k) for v, (k, _) in enumerate(LIES, start=2)])
def test_loading_refuses_metadata_that_disagrees(exported, version, key):
    base, _, _ = exported
    with pytest.raises(CorruptPosterior, match=f"says {key} .*export the posterior again"):
        load_posterior(base / "m" / str(version))


def test_the_server_refuses_lying_versions_and_keeps_serving_the_true_one(exported, caplog):
    base, laplace, x = exported
    caplog.set_level(logging.WARNING, logger="keras_ntk.serving")
    server = Server(base, port=0, poll_interval=30.0).start()
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=60) as client:
            end = time.monotonic() + 300
            while time.monotonic() < end and any(v["state"] == "LOADING" for v in client.status("m")):
                time.sleep(0.05)
            states = {v["version"]: v for v in client.status("m")}
            served = client.predict("m", x)
    finally:
        server.stop(grace=1)
    assert states[1]["state"] == "AVAILABLE"
    for version, (key, _) in enumerate(LIES, start=2):
        assert states[version]["state"] == "FAILED", (key, states[version])
        assert f"says {key} " in states[version]["error"], states[version]["error"]
    assert served.version == 1
    np.testing.assert_allclose(served.mean, laplace.predict(x).mean().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(served.variance, laplace.predict(x).variance().numpy(), rtol=1e-6, atol=1e-9)
    refused = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    for version, (key, _) in enumerate(LIES, start=2):
        lines = [m for m in refused if f"m version {version} not loaded" in m]
        assert len(lines) == 1 and f"says {key} " in lines[0] and "\n" not in lines[0], lines
