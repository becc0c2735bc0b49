"""The posterior directory format: schema, checks on load, atomic replacement."""

import json
import threading

import keras
import numpy as np
import pytest

import keras_ntk
from keras_ntk.predictive import NTKGP, CorruptPosterior, Laplace, load_posterior, posterior_format


@pytest.fixture(scope="module")
def laplace():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    model = keras_ntk.models.mlp(4, 1, 1, input_shape=(2,))
    return Laplace(model, structure="diag", prior_precision=0.5, noise_variance=0.1).fit((x, np.sin(x[:, :1])))


def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_save_writes_the_schema_and_load_reads_it_back(tmp_path, laplace):
    path = laplace.save(tmp_path / "p", metadata={"note": "hello"})
    assert _names(path) == sorted(posterior_format.FILES) and _names(tmp_path) == ["p"]
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["format"] == posterior_format.FORMAT and meta["format_version"] == posterior_format.FORMAT_VERSION
    assert (meta["posterior"], meta["likelihood"], meta["structure"]) == ("laplace", "regression", "diag")
    assert (meta["subset_of_weights"], meta["hessian_structure"]) == ("all", "diag")
    assert (meta["input_shape"], meta["output_shape"], meta["input_dtype"]) == ([2], [1], "float32")
    assert meta["parameters"] == 2 * 4 + 4 + 4 + 1 and meta["has_model"] is True and meta["note"] == "hello"
    loaded = load_posterior(path)
    assert isinstance(loaded, Laplace) and loaded.structure == "diag"
    np.testing.assert_array_equal(
        loaded.functional_covariance(np.ones((2, 2))).numpy(), laplace.functional_covariance(np.ones((2, 2))).numpy()
    )
    with pytest.raises(ValueError, match="already set by the posterior format"):
        laplace.save(tmp_path / "q", metadata={"format": "mine"})
    assert _names(tmp_path) == ["p"]


def test_a_posterior_without_a_network(tmp_path):
    x = np.random.default_rng(1).normal(size=(6, 3))
    gp = NTKGP.infinite_width(x, np.sin(x[:, 0]), 0.1, depth=2, parametrization="standard", width=64)
    path = gp.save(tmp_path / "gp")
    assert _names(path) == ["metadata.json", "posterior.npz"]
    meta = posterior_format.read_metadata(path)
    assert meta["has_model"] is False and (meta["input_shape"], meta["output_shape"]) == ([3], [1])
    with pytest.raises(CorruptPosterior, match="model.keras"):
        posterior_format.read_metadata(path, require_model=True)
    loaded = load_posterior(path)
    np.testing.assert_array_equal(loaded.predict(x).variance().numpy(), gp.predict(x).variance().numpy())


def _corrupt(path, change):
    meta = json.loads((path / "metadata.json").read_text())
    change(meta)
    (path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "posterior.npz").unlink(), "posterior.npz is missing"),
        (lambda p: (p / "metadata.json").write_text("{not json"), "not valid JSON"),
        (lambda p: _corrupt(p, lambda m: m.update(format="other")), "does not say format"),
        (lambda p: _corrupt(p, lambda m: m.update(format_version=99)), "upgrade keras-ntk"),
        (lambda p: _corrupt(p, lambda m: m.update(posterior="svgp")), "not one of"),
        (lambda p: _corrupt(p, lambda m: m.pop("likelihood")), "lacks 'likelihood'"),
        (lambda p: _corrupt(p, lambda m: m.update(input_shape=[5])), "says input_shape"),
        (lambda p: (p / "model.keras").write_bytes(b"not a zip"), "could not be loaded safely"),
        (lambda p: (p / "posterior.npz").write_bytes(b"not a zip"), "could not be read"),
    ],
)
def test_load_names_what_is_wrong(tmp_path, laplace, damage, message):
    path = laplace.save(tmp_path / "p")
    damage(path)
    with pytest.raises(CorruptPosterior, match=message):
        Laplace.load(path)


def test_symlinked_files_are_refused(tmp_path, laplace):
    path = laplace.save(tmp_path / "p")
    (tmp_path / "elsewhere.npz").write_bytes((path / "posterior.npz").read_bytes())
    (path / "posterior.npz").unlink()
    (path / "posterior.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(CorruptPosterior, match="not a regular file"):
        posterior_format.read_metadata(path)


def test_a_laplace_directory_is_not_an_ntk_gp(tmp_path, laplace):
    with pytest.raises(CorruptPosterior, match="not 'ntk_gp'"):
        NTKGP.load(laplace.save(tmp_path / "p"))


def test_directories_written_before_the_version_field_load(tmp_path, laplace):
    path = laplace.save(tmp_path / "p")
    _corrupt(path, lambda m: [m.pop(key) for key in ("format_version", "has_model", "hessian_structure")])
    assert Laplace.load(path).structure == "diag"


def test_metadata_that_lies_about_a_posterior_without_a_network_is_refused(tmp_path):
    x = np.random.default_rng(1).normal(size=(6, 3))
    gp = NTKGP.infinite_width(x, np.sin(x[:, 0]), 0.1, depth=2, parametrization="standard", width=64)
    for key, value in (("output_shape", [2]), ("input_shape", [4]), ("likelihood", "classification")):
        path = gp.save(tmp_path / key)
        _corrupt(path, lambda m: m.update({key: value}))
        with pytest.raises(CorruptPosterior, match=f"says {key} .* was saved with"):
            load_posterior(path)


def test_directories_written_before_the_record_are_checked_against_the_model_only(tmp_path, laplace):
    path = laplace.save(tmp_path / "p")
    with np.load(path / "posterior.npz") as archive:
        state = {name: archive[name] for name in archive.files if name != posterior_format.RECORD_KEY}
    np.savez(path / "posterior.npz", **state)
    _corrupt(path, lambda m: m.update(prior_precision=0.5))  # the true value: loads
    assert Laplace.load(path).prior_precision == pytest.approx(0.5)
    _corrupt(path, lambda m: m.update(output_shape=[3]))
    with pytest.raises(CorruptPosterior, match="says output_shape \\[3\\] but model.keras has \\[1\\]"):
        Laplace.load(path)


def test_a_failure_during_save_keeps_the_old_posterior(tmp_path, laplace, monkeypatch):
    path = laplace.save(tmp_path / "p", metadata={"generation": 1})

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)  # after model.keras was written
    with pytest.raises(OSError, match="disk full"):
        laplace.save(path, metadata={"generation": 2})
    assert _names(tmp_path) == ["p"]
    assert posterior_format.read_metadata(path)["generation"] == 1
    assert Laplace.load(path).noise_variance == pytest.approx(laplace.noise_variance)


def test_readers_always_find_a_complete_posterior_while_it_is_saved_again(tmp_path, laplace):
    path = laplace.save(tmp_path / "p", metadata={"generation": 0})
    stop, problems, generations = threading.Event(), [], set()

    def read():
        while not stop.is_set():
            try:
                generations.add(posterior_format.read_metadata(path, require_model=True)["generation"])
            except (OSError, CorruptPosterior) as error:
                problems.append(repr(error))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for generation in range(1, 6):
            laplace.save(path, metadata={"generation": generation})
    finally:
        stop.set()
        reader.join()
    assert problems == []
    assert posterior_format.read_metadata(path)["generation"] == 5 and _names(tmp_path) == ["p"]
