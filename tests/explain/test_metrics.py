"""Saliency, attention and feature agreement metrics against scipy, brute force and direct numpy formulas."""

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from visiondistill.distill.losses import attention_transfer_loss
from visiondistill.explain.metrics import (
    SALIENCY_KEYS,
    AttentionAgreement,
    LinearCKA,
    PointingGame,
    SaliencyAgreement,
    _average_ranks,
    attention_cosine,
    attention_distance,
    attention_map,
    boxes_to_masks,
    linear_cka,
    pointing_game,
    pointing_game_hits,
    saliency_agreement,
    saliency_agreement_per_image,
)

ATOL = 1e-6
EPS = 2.2204e-16


def rand_maps(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator, dtype=torch.float64)


def tied_maps(*shape, levels=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=generator).to(torch.float64)


# ----------------------------------------------------------------------------------------- numpy references
def brute_topk_iou(t, s, k):
    count = min(max(math.ceil(round(k * t.size, 9)), 1), t.size)
    # Python's sort is stable: equal values keep their index order, which is the documented tie rule.
    top_t = set(sorted(range(t.size), key=lambda i: -t[i])[:count])
    top_s = set(sorted(range(s.size), key=lambda i: -s[i])[:count])
    return len(top_t & top_s) / len(top_t | top_s)


def np_distribution(x):
    return x / x.sum() if x.sum() > 0 else np.full_like(x, 1.0 / x.size)


def mit_similarity(map1, map2):
    """The MIT saliency benchmark's similarity.m, line by line (maps already at one size); MATLAB's 0/0 = NaN of a
    constant map is the documented exception: such a map counts as all-zero."""
    map1, map2 = map1.astype(np.float64), map2.astype(np.float64)
    if np.any(map1):
        span = map1.max() - map1.min()
        map1 = (map1 - map1.min()) / span if span > 0 else np.zeros_like(map1)
        if np.any(map1):
            map1 = map1 / map1.sum()
    if np.any(map2):
        span = map2.max() - map2.min()
        map2 = (map2 - map2.min()) / span if span > 0 else np.zeros_like(map2)
        if np.any(map2):
            map2 = map2 / map2.sum()
    return np.minimum(map1, map2).sum()


def mit_kldiv(saliency_map, fixation_map):
    """The MIT saliency benchmark's KLdiv.m, line by line: the fixation map (here the teacher) is the reference."""
    map1, map2 = saliency_map.astype(np.float64), fixation_map.astype(np.float64)
    if np.any(map1):
        map1 = map1 / map1.sum()
    if np.any(map2):
        map2 = map2 / map2.sum()
    return (map2 * np.log(EPS + map2 / (map1 + EPS))).sum()


def pysaliency_sim(map1, map2):
    """pysaliency's SIM (sum-normalised, no min-max), with an all-zero map taken as uniform instead of NaN."""
    return np.minimum(np_distribution(map1), np_distribution(map2)).sum()


def reference_scores(t, s, k=0.1):
    """Per-image scores of two flattened float64 maps, straight from docs/metrics.md."""
    constant = t.std() < 1e-8 or s.std() < 1e-8
    norms = np.linalg.norm(t) * np.linalg.norm(s)
    return {
        "pearson": 0.0 if constant else stats.pearsonr(t, s)[0],
        "spearman": 0.0 if constant else stats.spearmanr(t, s)[0],
        "topk_iou": brute_topk_iou(t, s, k),
        "cosine": 0.0 if norms == 0 else t @ s / norms,
        "sim": mit_similarity(s, t),
        "kld": mit_kldiv(s, t),
    }


def assert_scores_match(teacher, student, k=0.1):
    per_image = saliency_agreement_per_image(teacher, student, top_k=k)
    for index in range(teacher.shape[0]):
        expected = reference_scores(teacher[index].flatten().numpy(), student[index].flatten().numpy(), k)
        for key in SALIENCY_KEYS:
            assert per_image[key][index].item() == pytest.approx(expected[key], abs=ATOL), (key, index)
    means = saliency_agreement(teacher, student, top_k=k)
    for key in SALIENCY_KEYS:
        assert means[key].ndim == 0
        assert means[key].item() == pytest.approx(per_image[key].mean().item(), abs=1e-12)


# ------------------------------------------------------------------------------------------ saliency agreement
@pytest.mark.parametrize("k", [0.1, 0.25, 1.0])
def test_saliency_agreement_random_maps(k):
    teacher = rand_maps(5, 6, 7, seed=1)
    student = 0.5 * teacher + rand_maps(5, 6, 7, seed=2)
    assert_scores_match(teacher, student, k)


def test_saliency_agreement_maps_with_many_ties():
    teacher = tied_maps(6, 8, 8, levels=3, seed=3)
    student = tied_maps(6, 8, 8, levels=4, seed=4)
    assert_scores_match(teacher, student, 0.2)


def test_average_ranks_match_scipy_rankdata():
    x = torch.cat([tied_maps(3, 50, levels=5, seed=5), rand_maps(2, 50, seed=6)])
    expected = np.stack([stats.rankdata(row) for row in x.numpy()])
    np.testing.assert_allclose(_average_ranks(x).numpy(), expected, atol=1e-12)


def test_identical_maps_agree_perfectly():
    maps = rand_maps(4, 9, 9, seed=7)
    scores = saliency_agreement(maps, maps)
    for key in ("pearson", "spearman", "cosine", "topk_iou", "sim"):
        assert scores[key].item() == pytest.approx(1.0, abs=ATOL), key
    assert scores["kld"].item() == pytest.approx(0.0, abs=ATOL)


def test_constant_and_all_zero_maps_are_safe():
    teacher = torch.stack([torch.zeros(5, 5), torch.full((5, 5), 3.0), torch.zeros(5, 5), rand_maps(5, 5, seed=8)])
    student = torch.stack([rand_maps(5, 5, seed=9), rand_maps(5, 5, seed=10), torch.zeros(5, 5), torch.ones(5, 5)])
    per_image = saliency_agreement_per_image(teacher.double(), student.double())
    for key in SALIENCY_KEYS:
        assert torch.isfinite(per_image[key]).all(), key
    assert per_image["pearson"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert per_image["spearman"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert per_image["cosine"][0] == 0.0 and per_image["cosine"][2] == 0.0
    # As in the MIT benchmark, all-zero maps stay zero: two of them have sim 0 and kld 0; a constant map has no
    # saliency after min-max, so its sim is 0 too; all-constant maps select the same first pixels.
    assert per_image["sim"][2].item() == 0.0 and per_image["kld"][2].item() == pytest.approx(0.0)
    assert per_image["sim"][1].item() == 0.0 and per_image["sim"][0].item() == 0.0
    assert per_image["topk_iou"][2].item() == 1.0
    assert_scores_match(teacher.double(), student.double())


def test_topk_tie_rule_is_stable_by_index():
    # Top 2 of 4 with all values tied: indices {0, 1} for both maps -> IoU 1; with a shifted tie, {0, 1} vs {1, 2}.
    teacher = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    student = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert saliency_agreement(teacher, teacher, top_k=0.5)["topk_iou"].item() == 1.0
    assert saliency_agreement(teacher, student, top_k=0.5)["topk_iou"].item() == pytest.approx(1 / 3)


def test_two_dimensional_inputs_and_dtype():
    teacher, student = rand_maps(6, 6, seed=11).float(), rand_maps(6, 6, seed=12).float()
    scores = saliency_agreement(teacher, student)
    assert all(value.dtype == torch.float32 for value in scores.values())
    per_image = saliency_agreement_per_image(teacher, student)
    assert per_image["pearson"].shape == (1,)
    assert scores["pearson"].item() == pytest.approx(
        stats.pearsonr(teacher.double().flatten().numpy(), student.double().flatten().numpy())[0], abs=ATOL
    )


def test_student_maps_are_resized_bilinearly_to_the_teacher():
    teacher, student = rand_maps(3, 8, 8, seed=13), rand_maps(3, 4, 4, seed=14)
    resized = F.interpolate(student.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False).squeeze(1)
    ours = saliency_agreement_per_image(teacher, student)
    expected = saliency_agreement_per_image(teacher, resized)
    for key in SALIENCY_KEYS:
        torch.testing.assert_close(ours[key], expected[key])


def test_saliency_agreement_errors():
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(3, 4, 4\)"):
        saliency_agreement(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="non-negative"):
        saliency_agreement(torch.zeros(2, 4, 4), -torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="top_k"):
        saliency_agreement(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), top_k=0.0)
    with pytest.raises(ValueError, match=re.escape("(2, 1, 4, 4)")):
        saliency_agreement(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))


# ------------------------------------------------------------------------------------------------ pointing game
def test_boxes_to_masks():
    masks = boxes_to_masks([torch.tensor([[1, 1, 3, 2], [3.6, 2.4, 10, 10]]), torch.zeros(0, 4)], 4, 5)
    expected = np.zeros((2, 4, 5), dtype=bool)
    expected[0, 1:2, 1:3] = True
    expected[0, 2:4, 4:5] = True  # centres 4.5 and 2.5/3.5 lie inside [3.6, 10] × [2.4, 10]
    np.testing.assert_array_equal(masks.numpy(), expected)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        boxes_to_masks([torch.tensor([1, 2, 3])], 4, 4)


def test_pointing_game_hits_by_hand():
    maps = torch.zeros(3, 6, 6)
    maps[0, 2, 2] = 1.0  # inside
    maps[1, 5, 5] = 1.0  # outside, 3 px diagonally from the box corner (2, 2)
    maps[2, 2, 5] = 1.0  # outside, 3 px right of (2, 2)
    masks = boxes_to_masks([torch.tensor([[0, 0, 3, 3]])] * 3, 6, 6)
    assert pointing_game_hits(maps, masks).tolist() == [True, False, False]
    # TorchRay's strict rule: a mask pixel exactly `tolerance` away is not reached.
    assert pointing_game_hits(maps, masks, tolerance=3).tolist() == [True, False, False]
    assert pointing_game_hits(maps, masks, tolerance=3.01).tolist() == [True, False, True]
    assert pointing_game_hits(maps, masks, tolerance=math.sqrt(18)).tolist() == [True, False, True]
    assert pointing_game_hits(maps, masks, tolerance=4.25).tolist() == [True, True, True]
    assert pointing_game(maps, masks).item() == pytest.approx(1 / 3)


def test_pointing_game_resizes_the_map_not_the_mask():
    maps = torch.zeros(1, 2, 2)
    maps[0, 1, 1] = 1.0  # bilinear upsampling to 8×8 spreads the peak over the plateau rows/columns 6..7
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 6, 6] = True  # the first maximum in row-major order
    assert pointing_game_hits(maps, mask).tolist() == [True]
    mask[0, 6, 6], mask[0, 7, 7] = False, True
    assert pointing_game_hits(maps, mask).tolist() == [False]
    assert pointing_game_hits(maps, mask, tolerance=math.sqrt(2)).tolist() == [False]  # strict
    assert pointing_game_hits(maps, mask, tolerance=1.5).tolist() == [True]
    mask[0, 7, 7], mask[0, 4, 4] = False, True  # outside the upsampled peak
    assert pointing_game_hits(maps, mask).tolist() == [False]


def test_pointing_game_empty_mask_is_a_miss_and_errors():
    assert pointing_game_hits(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)).tolist() == [False]
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), tolerance=-1)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(1, 4, 4\)"):
        pointing_game(torch.rand(2, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------- attention metrics
def test_attention_metrics_match_the_loss_and_numpy():
    student, teacher = torch.randn(3, 4, 4, 4, dtype=torch.float64), torch.randn(3, 8, 8, 8, dtype=torch.float64)
    assert attention_distance(student, teacher).item() == pytest.approx(
        attention_transfer_loss(student, teacher).item(), abs=1e-12
    )
    q_s = attention_map(student, size=(8, 8)).numpy()
    q_t = attention_map(teacher).numpy()
    assert attention_cosine(student, teacher).item() == pytest.approx((q_s * q_t).sum(axis=1).mean(), abs=ATOL)
    assert attention_cosine(teacher, teacher).item() == pytest.approx(1.0, abs=ATOL)


def test_attention_metrics_errors():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(3, 3, 4, 4\)"):
        attention_cosine(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))


# ------------------------------------------------------------------------------------------------------- CKA
def np_linear_cka(x, y):
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize(("n", "p1", "p2"), [(20, 5, 8), (6, 30, 12)])  # features narrower / wider than n
def test_linear_cka_matches_numpy(n, p1, p2):
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, p1, generator=generator, dtype=torch.float64)
    y = x[:, :1] * torch.randn(1, p2, generator=generator, dtype=torch.float64) + torch.randn(
        n, p2, generator=generator, dtype=torch.float64
    )
    assert linear_cka(x, y).item() == pytest.approx(np_linear_cka(x.numpy(), y.numpy()), abs=ATOL)
    assert linear_cka(x, y).item() == pytest.approx(linear_cka(y, x).item(), abs=ATOL)


# Kornblith et al.'s reference code (google-research/google-research, representation_similarity), transcribed.
def gram_linear(x):
    return x.dot(x.T)


def center_gram(gram, unbiased=False):
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def kornblith_cka(gram_x, gram_y, debiased=False):
    gram_x = center_gram(gram_x, unbiased=debiased)
    gram_y = center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    normalization_x = np.linalg.norm(gram_x)
    normalization_y = np.linalg.norm(gram_y)
    return scaled_hsic / (normalization_x * normalization_y)


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_kornblith_reference(debiased):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(10, 40, generator=generator, dtype=torch.float64)
    y = x[:, :12] + torch.randn(10, 12, generator=generator, dtype=torch.float64)
    expected = kornblith_cka(gram_linear(x.numpy()), gram_linear(y.numpy()), debiased=debiased)
    assert linear_cka(x, y, debiased=debiased).item() == pytest.approx(expected, abs=ATOL)


def test_debiased_cka_removes_the_small_sample_bias():
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, 2000, generator=generator), torch.randn(16, 3000, generator=generator)
    assert linear_cka(x, y).item() > 0.8
    assert abs(linear_cka(x, y, debiased=True).item()) < 0.1
    assert linear_cka(x[:3], y[:3], debiased=True).item() == 0.0
    metric = LinearCKA(debiased=True)
    metric.update(x[:7], y[:7])
    metric.update(x[7:], y[7:])
    assert metric.compute().item() == pytest.approx(linear_cka(x, y, debiased=True).item(), abs=ATOL)


def test_linear_cka_invariances():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 9, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=generator, dtype=torch.float64))
    base = linear_cka(x, y).item()
    assert linear_cka(x, y @ q).item() == pytest.approx(base, abs=ATOL)
    assert linear_cka(4.0 * x, 0.1 * y).item() == pytest.approx(base, abs=ATOL)
    assert linear_cka(x + 5.0, y).item() == pytest.approx(base, abs=ATOL)
    q6, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    assert linear_cka(x, x @ q6).item() == pytest.approx(1.0, abs=ATOL)
    assert linear_cka(x, 3.0 * x).item() == pytest.approx(1.0, abs=ATOL)


def test_linear_cka_four_dimensional_and_degenerate_inputs():
    x, y = torch.randn(5, 2, 3, 3), torch.randn(5, 4, 2, 2)
    assert linear_cka(x, y).item() == pytest.approx(linear_cka(x.flatten(1), y.flatten(1)).item(), abs=ATOL)
    assert linear_cka(torch.full((5, 3), 0.7), torch.randn(5, 3)).item() == 0.0
    assert linear_cka(torch.randn(1, 3), torch.randn(1, 3)).item() == 0.0
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 3\)"):
        linear_cka(torch.randn(5, 3), torch.randn(4, 3))


# ---------------------------------------------------------------------------------------------- Metric classes
def test_saliency_agreement_metric_equals_functional_over_uneven_batches():
    teacher = torch.cat([rand_maps(7, 6, 6, seed=20), tied_maps(3, 6, 6, seed=21)]).float()
    student = torch.cat([rand_maps(7, 6, 6, seed=22), tied_maps(3, 6, 6, seed=23)]).float()
    metric = SaliencyAgreement(top_k=0.2)
    for start, stop in [(0, 1), (1, 5), (5, 10)]:
        metric.update(teacher[start:stop], student[start:stop])
    result = metric.compute()
    expected = saliency_agreement(teacher, student, top_k=0.2)
    assert set(result) == set(SALIENCY_KEYS)
    for key in SALIENCY_KEYS:
        assert result[key].item() == pytest.approx(expected[key].item(), abs=ATOL), key


def test_metric_states_merge_like_ddp():
    teacher, student = rand_maps(6, 5, 5, seed=24), rand_maps(6, 5, 5, seed=25)
    rank0, rank1 = SaliencyAgreement(), SaliencyAgreement()
    rank0.update(teacher[:2], student[:2])
    rank1.update(teacher[2:], student[2:])
    rank0.merge_state(rank1)
    assert rank0.compute()["spearman"].item() == pytest.approx(
        saliency_agreement(teacher, student)["spearman"].item(), abs=ATOL
    )

    x, y = torch.randn(9, 4), torch.randn(9, 7)
    cka0, cka1 = LinearCKA(), LinearCKA()
    cka0.update(x[:3], y[:3])
    cka1.update(x[3:], y[3:])
    cka0.merge_state(cka1)
    assert cka0.compute().item() == pytest.approx(linear_cka(x, y).item(), abs=ATOL)


def test_pointing_game_metric():
    maps = torch.rand(7, 8, 8)
    masks = torch.rand(7, 8, 8) > 0.5
    metric = PointingGame(tolerance=1)
    metric.update(maps[:3], masks[:3])
    metric.update(maps[3:], masks[3:])
    assert metric.compute().item() == pytest.approx(pointing_game(maps, masks, tolerance=1).item(), abs=ATOL)


def test_attention_agreement_metric():
    student, teacher = torch.randn(7, 3, 4, 4), torch.randn(7, 6, 8, 8)
    metric = AttentionAgreement()
    for start, stop in [(0, 2), (2, 3), (3, 7)]:
        metric.update(student[start:stop], teacher[start:stop])
    result = metric.compute()
    assert result["at_distance"].item() == pytest.approx(attention_distance(student, teacher).item(), abs=ATOL)
    assert result["at_cosine"].item() == pytest.approx(attention_cosine(student, teacher).item(), abs=ATOL)


def test_linear_cka_metric_is_full_data_cka_not_a_batch_mean():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(12, 3, 2, 2, generator=generator)
    teacher = student.flatten(1)[:, :5] + 0.5 * torch.randn(12, 5, generator=generator)
    metric = LinearCKA()
    for start, stop in [(0, 2), (2, 7), (7, 12)]:
        metric.update(student[start:stop], teacher[start:stop])
    assert metric.compute().item() == pytest.approx(linear_cka(student, teacher).item(), abs=ATOL)
    metric.reset()
    assert metric.student == [] and metric.teacher == []


def test_metric_flags():
    for metric_class in (SaliencyAgreement, PointingGame, AttentionAgreement, LinearCKA):
        assert metric_class.full_state_update is False
        assert metric_class.is_differentiable is False
    assert PointingGame.higher_is_better is True and LinearCKA.higher_is_better is True


# ------------------------------------------------------------------------------- edges the tests above leave open
def test_pointing_game_default_tolerance_is_exact_and_the_radius_is_strict():
    # The peak sits at (row 1, column 1); the mask is the pixel right of it and the one two rows down.
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 1] = 1.0
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 1, 2] = True
    assert pointing_game_hits(maps, masks).tolist() == [False]
    assert float(pointing_game(maps, masks)) == 0.0
    # TorchRay: hit iff (dy² + dx²) < tolerance², so tolerance 1 is the peak pixel alone, like tolerance 0
    assert pointing_game_hits(maps, masks, tolerance=1).tolist() == [False]
    assert pointing_game_hits(maps, masks, tolerance=1.001).tolist() == [True]
    only_far = torch.zeros(1, 4, 4, dtype=torch.bool)
    only_far[0, 3, 1] = True
    assert pointing_game_hits(maps, only_far, tolerance=2).tolist() == [False]
    assert pointing_game_hits(maps, only_far, tolerance=2.001).tolist() == [True]
    on_peak = torch.zeros(1, 4, 4, dtype=torch.bool)
    on_peak[0, 1, 1] = True
    assert pointing_game_hits(maps, on_peak).tolist() == pointing_game_hits(maps, on_peak, tolerance=1).tolist()
    metric = PointingGame()
    metric.update(maps, masks)
    assert float(metric.compute()) == 0.0


def test_pointing_game_metric_tolerance_and_ddp_merge():
    PointingGame(tolerance=0.5)  # any tolerance >= 0 is fine
    with pytest.raises(ValueError, match="tolerance"):
        PointingGame(tolerance=-0.5)
    maps, masks = rand_maps(6, 5, 5, seed=30), rand_maps(6, 5, 5, seed=31) > 0.5
    rank0, rank1 = PointingGame(tolerance=1.0), PointingGame(tolerance=1.0)
    rank0.update(maps[:2], masks[:2])
    rank1.update(maps[2:], masks[2:])
    rank0.merge_state(rank1)
    merged = rank0.compute()
    assert merged.shape == ()
    assert float(merged) == pytest.approx(float(pointing_game(maps, masks, tolerance=1.0)))


def test_map_errors_name_maps_and_masks():
    with pytest.raises(ValueError, match=r"^maps must have shape \(N, H, W\) or \(H, W\)"):
        pointing_game_hits(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"^masks must have shape \(N, H, W\) or \(H, W\)"):
        pointing_game_hits(torch.zeros(1, 4, 4), torch.zeros(4))


def test_attention_metrics_use_p_on_both_sides_and_resize_to_a_non_square_teacher():
    generator = torch.Generator().manual_seed(32)
    student = torch.randn(2, 3, 2, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 5, 4, 6, generator=generator, dtype=torch.float64)
    q_s = F.normalize(
        F.interpolate(student.abs().pow(3).mean(1, keepdim=True), size=(4, 6), mode="bilinear").flatten(1), dim=1
    )
    q_t = F.normalize(teacher.abs().pow(3).mean(1).flatten(1), dim=1)
    torch.testing.assert_close(attention_distance(student, teacher, p=3), (q_s - q_t).pow(2).mean(dim=1).mean())
    torch.testing.assert_close(attention_cosine(student, teacher, p=3), (q_s * q_t).sum(dim=1).mean())
    with pytest.raises(ValueError, match=r"^student_feature must be 4-D"):
        attention_distance(student[0], teacher)
    with pytest.raises(ValueError, match=r"^teacher_feature must be 4-D"):
        attention_cosine(student, teacher[0])


def test_attention_agreement_metric_merges_like_ddp():
    AttentionAgreement(p=0.5)  # any p > 0 is fine
    with pytest.raises(ValueError, match="p must be a positive number"):
        AttentionAgreement(p=0)
    generator = torch.Generator().manual_seed(33)
    student, teacher = torch.randn(5, 3, 4, 4, generator=generator), torch.randn(5, 2, 4, 4, generator=generator)
    rank0, rank1 = AttentionAgreement(), AttentionAgreement()
    rank0.update(student[:2], teacher[:2])
    rank1.update(student[2:], teacher[2:])
    rank0.merge_state(rank1)
    result = rank0.compute()
    for key, function in (("at_distance", attention_distance), ("at_cosine", attention_cosine)):
        assert result[key].shape == () and result[key].dtype == torch.float32
        assert float(result[key]) == pytest.approx(float(function(student, teacher)), rel=1e-6)


def test_linear_cka_metric_with_fewer_than_two_examples_is_zero_and_errors_name_the_side():
    metric = LinearCKA()
    metric.update(torch.randn(1, 4), torch.randn(1, 3))
    value = metric.compute()
    assert value.shape == () and float(value) == 0.0
    with pytest.raises(ValueError, match=r"^student_feature must have shape \(n, p\)"):
        LinearCKA().update(torch.randn(2, 3, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"^teacher_feature must have shape \(n, p\)"):
        LinearCKA().update(torch.randn(2, 3), torch.randn(2, 3, 4))


def test_linear_cka_at_the_smallest_sample_sizes():
    generator = torch.Generator().manual_seed(34)
    x, y = torch.randn(4, 3, generator=generator, dtype=torch.float64), torch.randn(4, 5, generator=generator)
    # Two examples: both centred grams are rank one and proportional, so CKA is exactly 1 (not the "too few" 0).
    assert float(linear_cka(x[:2], y[:2])) == pytest.approx(1.0)
    assert float(linear_cka(x[:1], y[:1])) == 0.0
    # The debiased estimator needs four examples, and has a value there.
    expected = kornblith_cka(gram_linear(x.numpy()), gram_linear(y.double().numpy()), debiased=True)
    assert float(linear_cka(x, y, debiased=True)) == pytest.approx(expected, abs=1e-6)
    assert float(linear_cka(x[:3], y[:3], debiased=True)) == 0.0
    with pytest.raises(ValueError, match=r"^x must have shape \(n, p\)"):
        linear_cka(torch.randn(2, 3, 4), y)
    with pytest.raises(ValueError, match=r"^y must have shape \(n, p\)"):
        linear_cka(x, torch.randn(4))


def test_saliency_agreement_dtype_follows_float_teacher_maps_and_defaults_for_integer_ones():
    teacher, student = rand_maps(2, 4, 4, seed=35), rand_maps(2, 4, 4, seed=36)
    assert all(v.dtype == torch.float64 for v in saliency_agreement_per_image(teacher, student).values())
    integer = (teacher * 10).long()
    assert all(v.dtype == torch.float32 for v in saliency_agreement_per_image(integer, student).values())
    with pytest.raises(ValueError, match=r"^teacher_maps must have shape"):
        saliency_agreement(torch.zeros(4), student)
    with pytest.raises(ValueError, match=r"^student_maps must have shape"):
        saliency_agreement(teacher, torch.zeros(4))
    with pytest.raises(ValueError, match="top_k"):
        saliency_agreement(teacher, student, top_k=1.5)


def test_top_k_of_one_position_and_distributions_of_small_mass():
    # Ten positions at top_k 0.1 is one position: the two maps share their maximum but not their second.
    teacher = torch.tensor([[9.0, 8.0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    student = torch.tensor([[9.0, 0, 8.0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    assert float(saliency_agreement(teacher, student, top_k=0.1)["topk_iou"]) == 1.0
    assert float(saliency_agreement(teacher, student, top_k=0.2)["topk_iou"]) == pytest.approx(1 / 3)
    # sim and kld compare distributions: a map whose mass is below one is normalised like any other.
    small = saliency_agreement(teacher * 1e-3, student * 1e-3)
    large = saliency_agreement(teacher, student)
    for key in ("sim", "kld"):
        assert float(small[key]) == pytest.approx(float(large[key]), rel=1e-9)


# ------------------------------------------------------------------------------------ states, as DDP sees them
def test_metric_states_are_float64_sums_and_integer_counts():
    # Sums over many images stay float64 (a float32 sum drifts after ~10^7 terms) and counts stay exact integers;
    # DDP all-reduces these tensors, so their dtypes are the same on every rank whatever the inputs were.
    saliency, pointing, attention = SaliencyAgreement(), PointingGame(), AttentionAgreement()
    saliency.update(rand_maps(2, 4, 4, seed=70).float(), rand_maps(2, 4, 4, seed=71).float())
    pointing.update(torch.rand(2, 4, 4), torch.rand(2, 4, 4) > 0.5)
    attention.update(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    for key in SALIENCY_KEYS:
        assert getattr(saliency, f"sum_{key}").dtype == torch.float64, key
    assert attention.sum_distance.dtype == torch.float64 and attention.sum_cosine.dtype == torch.float64
    for count in (saliency.count, pointing.hits, pointing.total, attention.count):
        assert count.dtype == torch.int64
    assert int(saliency.count) == 2 and int(pointing.total) == 2 and int(attention.count) == 2


def test_linear_cka_metric_before_any_update_and_its_states_gather_by_concatenation():
    with warnings.catch_warnings():  # torchmetrics warns about compute() before update(); that is the case tested
        warnings.simplefilter("ignore", UserWarning)
        empty = LinearCKA().compute()
    assert empty.shape == () and float(empty) == 0.0
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 7, dtype=torch.float64)
    rank0, rank1 = LinearCKA(sync_on_compute=False), LinearCKA()
    rank0.update(x[:2], y[:2])
    rank0.update(x[2:4], y[2:4])
    rank1.update(x[4:], y[4:])
    # What DDP does: each state is all-gathered (rank 0's first), then reduced with its dist_reduce_fx ("cat").
    incoming = [torch.cat(rank1.student), torch.cat(rank1.teacher)]

    def all_gather(tensor, group=None):
        other = incoming.pop(0)
        assert other.shape[1:] == tensor.shape[1:], "one gather per state, student first"
        return [tensor, other]

    with rank0.sync_context(dist_sync_fn=all_gather, distributed_available=lambda: True):
        assert isinstance(rank0.student, torch.Tensor) and isinstance(rank0.teacher, torch.Tensor)
        torch.testing.assert_close(rank0.student, x)
        torch.testing.assert_close(rank0.teacher, y)
        assert float(rank0.compute()) == pytest.approx(np_linear_cka(x.numpy(), y.numpy()), abs=1e-6)
    assert not incoming


def test_pointing_game_resizes_integer_maps():
    # Count maps (e.g. fixation counts) are integers; bilinear resizing happens in float64.
    maps = torch.tensor([[[0, 0], [0, 5]], [[7, 0], [0, 0]]])  # peaks bottom-right and top-left
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 3, 3] = True
    assert pointing_game_hits(maps, masks).tolist() == [True, False]


# ---------------------------------------------------------------------------- rounding, scale and exact values
def test_correlations_and_cosines_of_exact_copies_are_exactly_one():
    # Unclamped, these float64 examples come out at 1 + 2^-52 (or −1 − 2^-52): the clamps keep them in [−1, 1].
    x = rand_maps(1, 7, 7, seed=0)
    assert float(saliency_agreement_per_image(x, 3 * x)["pearson"]) == 1.0
    assert float(saliency_agreement_per_image(x, 5 - x)["pearson"]) == -1.0
    assert float(saliency_agreement_per_image(x, x.clone())["cosine"]) == 1.0
    a = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the result keeps the default dtype, so float64 shows the last bit
    try:
        assert float(linear_cka(a, a.clone())) == 1.0
    finally:
        torch.set_default_dtype(default)


def test_saliency_scores_do_not_depend_on_the_maps_scale():
    # Maps of small values (norms below 1) score as their scaled-up copies: no step depends on absolute size.
    teacher, student = rand_maps(3, 6, 6, seed=72), rand_maps(3, 6, 6, seed=73)
    small = saliency_agreement_per_image(1e-3 * teacher, 1e-3 * student)
    large = saliency_agreement_per_image(teacher, student)
    for key in SALIENCY_KEYS:
        torch.testing.assert_close(small[key], large[key], rtol=1e-9, atol=1e-12, msg=key)
    assert float(large["cosine"].min()) > 0.5  # a value, not the 0 of an all-zero map


def test_top_k_iou_is_an_exact_float64_ratio():
    teacher = torch.tensor([[9.0, 8.0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    student = torch.tensor([[9.0, 0, 8.0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    assert float(saliency_agreement_per_image(teacher, student, top_k=0.2)["topk_iou"]) == 1 / 3


def test_integer_student_maps_are_scored_like_their_float_copies():
    teacher = rand_maps(2, 6, 6, seed=74)
    student = (rand_maps(2, 3, 3, seed=75) * 10).long()  # another size: resized in float64
    scores = saliency_agreement_per_image(teacher, student)
    expected = saliency_agreement_per_image(teacher, student.double())
    for key in SALIENCY_KEYS:
        torch.testing.assert_close(scores[key], expected[key], msg=key)


def test_negative_maps_are_rejected_naming_the_side():
    maps = rand_maps(1, 4, 4, seed=76)
    with pytest.raises(ValueError, match=r"^teacher_maps must be non-negative, got a minimum of -1"):
        saliency_agreement(maps - 1.0 - maps, maps)
    with pytest.raises(ValueError, match=r"^student_maps must be non-negative, got a minimum of -2"):
        saliency_agreement(maps, maps - 2.0 - maps)


def test_linear_cka_of_zero_or_numerically_constant_features_is_zero():
    y = torch.randn(50, 4, generator=torch.Generator().manual_seed(77), dtype=torch.float64)
    zeros = torch.zeros(50, 3, dtype=torch.float64)
    # Constant columns of large values: centring leaves ~1e-9 of rounding noise, far below 1e-10 of their norm.
    constant = torch.full((50, 3), 1e6 / 3, dtype=torch.float64)
    for debiased in (False, True):
        for degenerate in (zeros, constant):
            assert float(linear_cka(degenerate, y, debiased=debiased)) == 0.0
            assert float(linear_cka(y, degenerate, debiased=debiased)) == 0.0


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_of_small_features_and_its_dtype(debiased):
    generator = torch.Generator().manual_seed(78)
    x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    y = x[:, :3] + 0.5 * torch.randn(8, 3, generator=generator, dtype=torch.float64)
    expected = kornblith_cka(gram_linear(x.numpy()), gram_linear(y.numpy()), debiased=debiased)
    for scale in (1.0, 1e-3):  # Gram norms far below 1 at 1e-3
        value = linear_cka(scale * x, scale * y, debiased=debiased)
        assert value.dtype == torch.float32  # the default dtype, even for float64 features
        assert float(value) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------- parity with named references
def torchray_pointing_hit(mask: torch.Tensor, point: tuple[int, int], tolerance: float) -> bool:
    """TorchRay's PointingGame.evaluate (torchray/benchmark/pointing_game.py), transcribed."""
    v, u = torch.meshgrid(
        (torch.arange(mask.shape[0], dtype=torch.float32) - point[0]) ** 2,
        (torch.arange(mask.shape[1], dtype=torch.float32) - point[1]) ** 2,
        indexing="ij",
    )
    accept = (v + u) < tolerance**2
    return bool((mask & accept).view(-1).any())


@pytest.mark.parametrize("tolerance", [0.5, 1, 2, 3, math.sqrt(5), 4.5])
def test_pointing_game_matches_torchray(tolerance):
    maps = rand_maps(40, 9, 11, seed=80)
    masks = rand_maps(40, 9, 11, seed=81) > 0.85
    hits = pointing_game_hits(maps, masks, tolerance=tolerance).tolist()
    for index in range(40):
        peak = int(maps[index].flatten().argmax())
        point = (peak // 11, peak % 11)
        assert hits[index] == torchray_pointing_hit(masks[index], point, tolerance), index


def test_sim_conventions_mit_and_pysaliency():
    teacher = rand_maps(6, 7, 7, seed=82) + 0.5  # an offset: min-max changes these maps
    student = rand_maps(6, 7, 7, seed=83)
    mit = saliency_agreement_per_image(teacher, student)["sim"]
    pys = saliency_agreement_per_image(teacher, student, sim="pysaliency")["sim"]
    for index in range(6):
        t, s = teacher[index].numpy().ravel(), student[index].numpy().ravel()
        assert float(mit[index]) == pytest.approx(mit_similarity(s, t), abs=1e-12)
        assert float(pys[index]) == pytest.approx(pysaliency_sim(t, s), abs=1e-12)
    assert not torch.allclose(mit, pys)
    metric = SaliencyAgreement(sim="pysaliency")
    metric.update(teacher, student)
    assert float(metric.compute()["sim"]) == pytest.approx(float(pys.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="sim must be 'mit' or 'pysaliency', got 'judd'"):
        saliency_agreement(teacher, student, sim="judd")
    with pytest.raises(ValueError, match="sim must be 'mit' or 'pysaliency'"):
        SaliencyAgreement(sim="judd")


def test_kld_follows_mit_kldiv_with_all_zero_maps():
    teacher = torch.stack([torch.zeros(4, 4), rand_maps(4, 4, seed=84), rand_maps(4, 4, seed=85)])
    student = torch.stack([rand_maps(4, 4, seed=86), torch.zeros(4, 4), rand_maps(4, 4, seed=87)])
    kld = saliency_agreement_per_image(teacher, student)["kld"]
    for index in range(3):
        expected = mit_kldiv(student[index].numpy(), teacher[index].numpy())
        assert float(kld[index]) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert float(kld[0]) == 0.0 and float(kld[1]) > 20  # a zero student under a teacher's mass: log(1/eps) terms
