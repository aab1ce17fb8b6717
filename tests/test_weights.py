"""Class-weight schemes, custom weight tables and post-hoc logit adjustment (core.weights)."""
import json
import math

import numpy as np
import pytest

from core.errors import ClassWeightError
from core.weights import adjust_logits, class_weights, custom_weights, read_custom_weights

COUNTS = [90, 10]
TOY = [100, 50, 10, 1]
CLASSES = ["cat", "dog", "owl"]


def mean_weight_per_sample(weights, counts):
    counts = np.asarray(counts, dtype=float)
    return float((np.asarray(weights) * counts).sum() / counts.sum())


def test_none_is_all_ones():
    assert class_weights("none", TOY).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_balanced_is_inverse_frequency():
    assert class_weights("balanced", COUNTS) == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])  # sklearn's formula
    w = class_weights("balanced", TOY)
    assert w == pytest.approx(sum(TOY) / (len(TOY) * np.asarray(TOY, dtype=float)))
    assert w[3] / w[0] == pytest.approx(100)


def test_sqrt_is_inverse_square_root():
    w = class_weights("sqrt", TOY)
    assert w[3] / w[0] == pytest.approx(10)
    assert w[1] / w[0] == pytest.approx(math.sqrt(2))


def test_effective_number_of_samples():
    beta = 0.99
    w = class_weights("effective", TOY, beta=beta)
    raw = np.array([(1 - beta) / (1 - beta**n) for n in TOY])
    assert w == pytest.approx(raw * sum(TOY) / (raw * TOY).sum())
    assert w[3] / w[0] == pytest.approx((1 - beta**100) / (1 - beta))  # a single sample vs 100
    # large beta -> balanced; small beta -> nearly uniform
    assert class_weights("effective", TOY, beta=0.999999) == pytest.approx(class_weights("balanced", TOY), rel=1e-3)
    near_uniform = class_weights("effective", [1000, 10], beta=0.1)
    assert near_uniform == pytest.approx([1.0, 1.0], rel=1e-6)


@pytest.mark.parametrize("scheme", ["none", "balanced", "sqrt", "effective"])
def test_schemes_average_one_per_sample_and_favour_rare_classes(scheme):
    w = class_weights(scheme, TOY)
    assert mean_weight_per_sample(w, TOY) == pytest.approx(1.0)
    assert np.all(np.diff(w) >= 0)  # rarer class never weighs less
    assert np.isfinite(w).all() and (w > 0).all()


@pytest.mark.parametrize("beta", [0, 1, -0.5, 1.5])
def test_effective_beta_range(beta):
    with pytest.raises(ClassWeightError, match="beta"):
        class_weights("effective", TOY, beta=beta)


@pytest.mark.parametrize("counts", [[10], [10, 0], [5, -1], [[1, 2], [3, 4]]])
def test_counts_must_be_positive_per_class(counts):
    with pytest.raises(ClassWeightError, match="counts"):
        class_weights("balanced", counts)


def test_unknown_scheme():
    with pytest.raises(ClassWeightError, match="'inverse'.*balanced"):
        class_weights("inverse", TOY)


# ---------------------------------------------------------------- custom tables


def test_custom_table_keeps_unlisted_classes_at_one_before_rescaling():
    w = class_weights("custom", [5, 5, 5], CLASSES, custom={"owl": 4, "cat": 0.5})
    assert w.tolist() == pytest.approx([0.5 * 3 / 5.5, 3 / 5.5, 4.0 * 3 / 5.5])
    assert custom_weights({"dog": 0}, CLASSES).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("table,fragment", [
    ({"cow": 2.0}, "unknown classes 'cow'"),
    ({"cat": -1}, "'cat' must be a finite number >= 0, got -1"),
    ({"cat": float("nan")}, "'cat' must be a finite number >= 0, got nan"),
    ({"dog": float("inf")}, "'dog' must be a finite number >= 0, got inf"),
    ({"cat": "2"}, "'cat' must be a number, got '2'"),
    ({"cat": True}, "'cat' must be a number, got True"),
    ({"cat": None}, "'cat' must be a number, got None"),
    ({"cat": [1]}, "'cat' must be a number"),
    ({"cat": 0, "dog": 0, "owl": 0}, "all 0"),
])
def test_invalid_custom_tables(table, fragment):
    with pytest.raises(ClassWeightError) as err:
        custom_weights(table, CLASSES)
    assert fragment in str(err.value)


def test_custom_unknown_class_lists_the_known_ones():
    with pytest.raises(ClassWeightError, match="known classes: 'cat', 'dog', 'owl'"):
        custom_weights({"Cat": 1}, CLASSES)


def test_custom_needs_a_table_and_class_names():
    with pytest.raises(ClassWeightError, match="JSON object"):
        custom_weights([1, 2, 3], CLASSES)
    with pytest.raises(ClassWeightError, match="class names"):
        custom_weights({"cat": 1}, None)


def test_read_custom_weights(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"cat": 2, "owl": 0.5}))
    assert read_custom_weights(path) == {"cat": 2, "owl": 0.5}


def test_read_custom_weights_errors(tmp_path):
    with pytest.raises(ClassWeightError, match="not found"):
        read_custom_weights(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{cat: 2")
    with pytest.raises(ClassWeightError, match="not valid JSON"):
        read_custom_weights(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ClassWeightError, match="JSON object"):
        read_custom_weights(listed)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ClassWeightError, match="not valid JSON"):
        read_custom_weights(binary)


def test_nan_literal_in_json_file_is_rejected_by_validation(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"cat": NaN}')
    with pytest.raises(ClassWeightError, match="finite"):
        custom_weights(read_custom_weights(path), CLASSES)


# ---------------------------------------------------------------- logit adjustment


def test_adjust_logits_shifts_toward_rare_classes():
    prior = [0.9, 0.1]
    scores = np.array([[1.0, 0.0], [3.0, 0.0]])
    assert adjust_logits(scores, prior, 0.0).tolist() == scores.tolist()
    adjusted = adjust_logits(scores, prior, 1.0)
    assert adjusted - scores == pytest.approx(-np.log(np.array([[0.9, 0.1], [0.9, 0.1]])))
    assert adjusted.argmax(1).tolist() == [1, 0]  # the close call flips to the rare class
    assert adjust_logits(scores, prior, 5.0).argmax(1).tolist() == [1, 1]


def test_adjust_logits_handles_zero_prior_and_rejects_bad_tau():
    out = adjust_logits(np.zeros((1, 3)), [0.5, 0.5, 0.0], 1.0)
    assert np.isfinite(out).all() and out.argmax() == 2
    for tau in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ClassWeightError, match="tau"):
            adjust_logits(np.zeros((1, 2)), [0.5, 0.5], tau)


# ---------------------------------------------------------------- weighted loss


def test_weighted_loss_keeps_the_class_weight_in_a_one_class_batch():
    """A batch of the rare class only: weight 10 must give 10x the gradient (torch's weighted mean gives 1x)."""
    import torch

    from core.weights import weighted_cross_entropy

    labels = torch.tensor([1, 1, 1])

    def grad(weight):
        logits = torch.zeros(3, 2, requires_grad=True)
        weighted_cross_entropy(logits, labels, torch.tensor(weight)).backward()
        return logits.grad

    assert torch.allclose(grad([1.0, 10.0]), 10 * grad([1.0, 1.0]))
    plain = torch.nn.functional.cross_entropy(torch.zeros(3, 2), labels)
    assert weighted_cross_entropy(torch.zeros(3, 2), labels, torch.tensor([1.0, 10.0])) == pytest.approx(10 * plain)


# ---------------------------------------------------------------- issue 13: one weight scale


def test_custom_weights_are_scaled_like_the_schemes():
    """A custom table averages 1 per training sample too: scaling every weight changes nothing."""
    counts = [90, 10]
    small = class_weights("custom", counts, ["cat", "dog"], custom={"cat": 1, "dog": 9})
    large = class_weights("custom", counts, ["cat", "dog"], custom={"cat": 10, "dog": 90})
    np.testing.assert_allclose(small, large)
    assert (small * counts).sum() == pytest.approx(sum(counts))
    np.testing.assert_allclose(small, class_weights("balanced", counts))
