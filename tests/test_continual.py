"""keras_ntk.continual: metrics against hand-computed and loop-computed references, the
multi-head loss against numpy, the callbacks against direct evaluations and a brute-force
NTK built from a plain loop of tape.gradient calls."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_ntk
from keras_ntk import continual

# Four tasks. Task 1 is never learned (0.3 before its training by chance, 0.1 after);
# task 2 improves after its training (0.5 -> 0.8).
R = np.array([
    [0.9, 0.3, 0.1, 0.1],
    [0.7, 0.1, 0.2, 0.1],
    [0.6, 0.1, 0.5, 0.2],
    [0.5, 0.1, 0.8, 0.9],
])


def test_metrics_of_a_hand_computed_matrix():
    # by hand: f_0 = max(0.9, 0.7, 0.6) - 0.5 = 0.4; f_1 = max(0.1, 0.1) - 0.1 = 0 (the 0.3
    # before task 1 was trained does not count); f_2 = 0.5 - 0.8 = -0.3 (improved later)
    np.testing.assert_allclose(continual.forgetting(R), [0.4, 0.0, -0.3], atol=1e-12)
    assert continual.average_forgetting(R) == pytest.approx(0.1 / 3)
    assert continual.average_accuracy(R) == pytest.approx((0.5 + 0.1 + 0.8 + 0.9) / 4)
    assert continual.learning_accuracy(R) == pytest.approx((0.9 + 0.1 + 0.5 + 0.9) / 4)


def _forgetting_by_loops(r):
    t = len(r)
    return [max(r[l][j] for l in range(j, t - 1)) - r[t - 1][j] for j in range(t - 1)]


def test_forgetting_matches_the_definition_on_random_matrices():
    rng = np.random.default_rng(0)
    for t in (2, 3, 7):
        r = rng.random((t, t))
        np.testing.assert_allclose(continual.forgetting(r), _forgetting_by_loops(r.tolist()), atol=1e-12)
        assert continual.average_forgetting(r) == pytest.approx(np.mean(_forgetting_by_loops(r.tolist())))


def test_metric_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="square"):
        continual.average_accuracy(np.zeros((2, 3)))
    unfinished = R.copy()
    unfinished[3] = np.nan
    with pytest.raises(ValueError, match=r"Rows \[3\]"):
        continual.average_forgetting(unfinished)
    with pytest.raises(ValueError, match="at least two tasks"):
        continual.forgetting(np.array([[0.5]]))


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.sum(np.exp(z)))


def test_multi_head_loss_and_accuracy_against_numpy():
    rng = np.random.default_rng(1)
    heads, classes, n = 3, 4, 11
    logits = rng.normal(size=(n, heads * classes)).astype(np.float32)
    head = rng.integers(0, heads, n)
    label = rng.integers(0, classes, n)
    coded = np.concatenate([continual.head_labels(label[i : i + 1], head[i], classes) for i in range(n)])
    np.testing.assert_array_equal(coded, head * classes + label)

    expected_loss = np.mean([
        -_log_softmax(logits[i, head[i] * classes : (head[i] + 1) * classes].astype(np.float64))[label[i]]
        for i in range(n)
    ])
    loss = continual.MultiHeadCrossEntropy(classes)
    assert float(loss(coded, logits)) == pytest.approx(expected_loss, rel=1e-5)
    expected_accuracy = np.mean([
        np.argmax(logits[i, head[i] * classes : (head[i] + 1) * classes]) == label[i] for i in range(n)
    ])
    metric = continual.MultiHeadAccuracy(classes)
    metric.update_state(coded, logits)
    assert float(metric.result()) == pytest.approx(expected_accuracy)

    restored = continual.MultiHeadCrossEntropy.from_config(loss.get_config())
    assert restored.classes_per_head == classes
    assert continual.MultiHeadAccuracy.from_config(metric.get_config()).classes_per_head == classes


def test_one_head_is_ordinary_sparse_cross_entropy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(9, 5)).astype(np.float32)
    y = rng.integers(0, 5, 9)
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    assert float(continual.MultiHeadCrossEntropy(5)(y, logits)) == pytest.approx(float(reference), rel=1e-5)


def test_head_errors():
    with pytest.raises(ValueError, match="0..2"):
        continual.head_labels(np.array([0, 3]), 1, 3)
    with pytest.raises(ValueError, match="multiple of classes_per_head=4"):
        continual.MultiHeadCrossEntropy(4)(np.zeros(2, np.int64), np.zeros((2, 6), np.float32))
    with pytest.raises(ValueError, match="classes_per_head"):
        continual.MultiHeadCrossEntropy(0)


def _stream(rng, tasks, heads, classes, n=24, d=5):
    out = []
    for t in range(tasks):
        x = rng.normal(size=(n, d)).astype(np.float32)
        y = rng.integers(0, classes, n)
        out.append((x, continual.head_labels(y, t if heads > 1 else 0, classes)))
    return out


def _model(outputs, d=5, width=8, seed=0):
    keras.utils.set_random_seed(seed)
    return keras_ntk.models.mlp(width, 1, outputs, input_shape=(d,), parametrization="standard")


@pytest.mark.parametrize("heads", [1, 3])
def test_accuracy_matrix_callback_rows_equal_direct_evaluations(heads):
    rng = np.random.default_rng(3)
    classes = 2
    train, test = _stream(rng, 3, heads, classes), _stream(rng, 3, heads, classes, n=13)
    model = _model(heads * classes)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=continual.MultiHeadCrossEntropy(classes))
    callback = continual.AccuracyMatrixCallback(test, classes, batch_size=5)
    expected = np.full((3, 3), np.nan)
    for i, (x, y) in enumerate(train):
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback])
        for j, (xj, yj) in enumerate(test):
            logits = model(xj).numpy()
            h, c = yj // classes, yj % classes
            expected[i, j] = np.mean([np.argmax(logits[k, h[k] * classes : (h[k] + 1) * classes]) == c[k]
                                      for k in range(len(xj))])
        np.testing.assert_allclose(callback.matrix[: i + 1], expected[: i + 1], atol=1e-12)
        assert np.all(np.isnan(callback.matrix[i + 1 :]))
    assert len({tuple(row) for row in callback.matrix}) > 1  # training changed the accuracies
    with pytest.raises(ValueError, match="All 3 rows"):
        model.fit(*train[0], epochs=1, verbose=0, callbacks=[callback])


def _brute_force_trace_ntk(model, x):
    """(P, P) mean over outputs of J J^T, J from one tape.gradient call per (example, output)."""
    rows = []
    outputs = model.output_shape[-1]
    for i in range(len(x)):
        for k in range(outputs):
            with tf.GradientTape() as tape:
                value = model(x[i : i + 1])[0, k]
            grads = tape.gradient(value, model.trainable_variables)
            rows.append(np.concatenate([g.numpy().astype(np.float64).ravel() for g in grads]))
    j = np.array(rows).reshape(len(x), outputs, -1)
    return np.einsum("ikp,jkp->ij", j, j) / outputs


def test_ntk_change_callback_against_a_brute_force_kernel():
    rng = np.random.default_rng(4)
    train = _stream(rng, 2, 1, 3)
    probe = rng.normal(size=(4, 5)).astype(np.float32)
    model = _model(3)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=continual.MultiHeadCrossEntropy(3))
    callback = continual.NTKChangeCallback(probe)
    kernels = [_brute_force_trace_ntk(model, probe)]
    for x, y in train:
        model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[callback])
        kernels.append(_brute_force_trace_ntk(model, probe))
    for mine, reference in zip(callback.kernels, kernels):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)
    changes = [np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(kernels, kernels[1:])]
    np.testing.assert_allclose(callback.changes, changes, rtol=1e-3)
    assert all(c > 1e-3 for c in changes)  # the kernel moved
    total = np.linalg.norm(kernels[-1] - kernels[0]) / np.linalg.norm(kernels[0])
    assert callback.total_change() == pytest.approx(total, rel=1e-3)
    with pytest.raises(ValueError, match="No fit has ended"):
        continual.NTKChangeCallback(probe).total_change()


def test_target_accuracy_stopping_stops_at_the_first_epoch_reaching_the_target():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)  # linearly separable
    model = _model(2)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=continual.MultiHeadCrossEntropy(2),
                  metrics=[continual.MultiHeadAccuracy(2)])
    stop = continual.TargetAccuracyStopping(0.9)
    history = model.fit(x, y, epochs=60, batch_size=16, verbose=0, callbacks=[stop])
    accuracy = history.history["accuracy"]
    assert stop.reached and stop.epochs == len(accuracy) < 60
    assert accuracy[-1] >= 0.9 and all(a < 0.9 for a in accuracy[:-1])

    unreachable = continual.TargetAccuracyStopping(1.0)
    model.fit(x[:8], 1 - y[:8], epochs=2, verbose=0, callbacks=[unreachable])
    assert not unreachable.reached and unreachable.epochs == 2
    with pytest.raises(ValueError, match="'accuracy'.*compile the model"):
        plain = _model(2)
        plain.compile(optimizer="sgd", loss=continual.MultiHeadCrossEntropy(2))
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[continual.TargetAccuracyStopping(0.5)])
    with pytest.raises(ValueError, match="target"):
        continual.TargetAccuracyStopping(1.5)


def test_task_accuracy_with_one_head_over_all_outputs():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    y = rng.integers(0, 4, 30)
    model = _model(4)
    expected = np.mean(np.argmax(model(x).numpy(), axis=1) == y)
    assert continual.task_accuracy(model, x, y, batch_size=7) == pytest.approx(expected)
    with pytest.raises(ValueError, match="30 examples but y has 29"):
        continual.task_accuracy(model, x, y[:-1])
