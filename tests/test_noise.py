"""ied.noise against definitions: Random123's known answers, streams and counters, and the normal distribution."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ied import noise

# Random123's kat_vectors for philox4x32_10: counter (4 words), key (2 words) → output (4 words)
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KAT, ids=["zeros", "ones", "pi"])
def test_philox4x32_10_known_answers(counter, key, expected):
    words = noise.philox4x32([torch.tensor([c], dtype=torch.int64) for c in counter],
                             [torch.tensor([k], dtype=torch.int64) for k in key])
    assert tuple(int(w) for w in words) == expected


def test_known_answers_hold_inside_a_batch():
    """The vectorised path: the three vectors as three rows of one call."""
    counters = [torch.tensor([v[0][i] for v in KAT], dtype=torch.int64) for i in range(4)]
    keys = [torch.tensor([v[1][i] for v in KAT], dtype=torch.int64) for i in range(2)]
    words = noise.philox4x32(counters, keys)
    assert [tuple(int(w[row]) for w in words) for row in range(3)] == [v[2] for v in KAT]


KEYS = torch.arange(64, dtype=torch.int64) * 7919 + 3


def test_streams_are_independent():
    """Training ε, training t, sampling noise, NLL probes and dequantisation noise use distinct streams: the same
    key and counter give unrelated numbers in each."""
    counters = torch.zeros_like(KEYS)
    draws = {s: noise.normal(KEYS, counters, s, 256, torch.float64).flatten() for s in range(5)}
    for a in range(5):
        for b in range(a + 1, 5):
            assert not torch.equal(draws[a], draws[b])
            assert abs(np.corrcoef(draws[a], draws[b])[0, 1]) < 0.02, (a, b)  # 16,384 pairs: 4.4 standard errors
    from ied.nll import STREAM_DEQUANT, STREAM_PROBE
    assert len({noise.STREAM_SAMPLING, noise.STREAM_EPSILON, noise.STREAM_TIME, STREAM_PROBE, STREAM_DEQUANT}) == 5


def test_values_depend_on_the_counter_and_the_key():
    """Each training example (counter = its position) and each sampler step (counter = the draw) gets new numbers."""
    base = noise.normal(KEYS, torch.zeros_like(KEYS), noise.STREAM_EPSILON, 16, torch.float64)
    step = noise.normal(KEYS, torch.ones_like(KEYS), noise.STREAM_EPSILON, 16, torch.float64)
    other_key = noise.normal(KEYS + 1, torch.zeros_like(KEYS), noise.STREAM_EPSILON, 16, torch.float64)
    assert (base != step).all() and (base != other_key).all()
    high = noise.normal(KEYS, torch.full_like(KEYS, 1 << 40), noise.STREAM_EPSILON, 16, torch.float64)
    assert (base != high).all()  # the counter's upper 32 bits count too
    rnd = noise.PerImageNoise(KEYS)
    first, second = rnd.randn((64, 16), torch.float64), rnd.randn((64, 16), torch.float64)
    assert torch.equal(first, noise.normal(KEYS, torch.zeros_like(KEYS), noise.STREAM_SAMPLING, 16, torch.float64))
    assert (first != second).all()
    u0 = noise.uniform(KEYS, torch.zeros_like(KEYS), noise.STREAM_TIME)
    u1 = noise.uniform(KEYS, torch.ones_like(KEYS), noise.STREAM_TIME)
    assert (u0 != u1).all()


def test_rows_do_not_depend_on_their_batch():
    full = noise.normal(KEYS, torch.arange(64), noise.STREAM_SAMPLING, 30)
    assert torch.equal(full[10:13], noise.normal(KEYS[10:13], torch.arange(10, 13), noise.STREAM_SAMPLING, 30))


def _box_muller_normals(n: int) -> np.ndarray:
    keys = torch.arange(n // 64, dtype=torch.int64)
    return noise.normal(keys, torch.zeros_like(keys), noise.STREAM_EPSILON, 64, torch.float64).flatten().numpy()


def test_normals_are_standard_normal():
    """200K draws: mean, variance, kurtosis and a KS test against N(0, 1); the tails reach past 4σ."""
    z = _box_muller_normals(200_000)
    se = 1 / math.sqrt(len(z))
    assert abs(z.mean()) < 5 * se and abs(z.var() - 1) < 5 * math.sqrt(2) * se
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24) * se
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert np.abs(z).max() > 4


def test_the_ks_test_detects_a_wrong_transform():
    """Negative control: Box–Muller without the square root (a plausible slip) is rejected at this size."""
    keys = torch.arange(200_000 // 64, dtype=torch.int64)
    w0, w1, _, _ = noise._words(keys, torch.zeros_like(keys), noise.STREAM_EPSILON, 16)
    u0, u1 = ((w.double() + 0.5) * 2.0**-32 for w in (w0, w1))
    wrong = (-2 * torch.log(u0) * torch.cos(2 * math.pi * u1)).flatten().numpy()
    assert stats.kstest(wrong, "norm").pvalue < 1e-6
    scaled = _box_muller_normals(200_000) * 1.02  # a 2% error in the scale
    assert stats.kstest(scaled, "norm").pvalue < 1e-3


def test_uniforms_are_uniform_with_53_bits():
    """Training t ~ U[0, 1): 53 random bits from two Philox words (with 24, as float32 keeps, 200K draws collide
    about 800 times and t can round to 1)."""
    keys = torch.arange(200_000, dtype=torch.int64)
    u = noise.uniform(keys, torch.zeros_like(keys), noise.STREAM_TIME).numpy()
    assert (u >= 0).all() and (u < 1).all() and stats.kstest(u, "uniform").pvalue > 1e-3
    assert len(np.unique(u)) == len(u) and (np.modf(u * 2.0**53)[0] == 0).all()
    w0, w1, _, _ = noise._words(keys[:3], torch.zeros(3, dtype=torch.int64), noise.STREAM_TIME, 1)
    for i in range(3):  # the definition: (w0 >> 5) · 2^26 + (w1 >> 6), over 2^53
        assert u[i] == ((int(w0[i, 0]) >> 5) * 2**26 + (int(w1[i, 0]) >> 6)) / 2**53
    assert stats.kstest(u**1.05, "uniform").pvalue < 1e-6  # negative control


def test_words_are_philox_of_the_split_key_counter_stream_and_block():
    """Row b, block j: Philox-4x32-10 of counter (j, stream, counter_lo, counter_hi), key (key_lo, key_hi)."""
    keys = torch.tensor([3, (7 << 32) | 11, (1 << 63) - 1], dtype=torch.int64)
    counters = torch.tensor([0, (5 << 32) | 2, 123456789012], dtype=torch.int64)
    words = noise._words(keys, counters, 4, 3)
    for b in range(3):
        k, c = int(keys[b]), int(counters[b])
        for j in range(3):
            expected = noise.philox4x32([torch.tensor([v]) for v in (j, 4, c & noise.MASK32, c >> 32)],
                                        [torch.tensor([v]) for v in (k & noise.MASK32, k >> 32)])
            assert tuple(int(w[b, j]) for w in words) == tuple(int(e) for e in expected), (b, j)


def test_box_muller_written_out():
    """z = √(−2 ln u₀) cos 2πu₁, √(−2 ln u₀) sin 2πu₁, then the same for u₂, u₃, with u = (w + ½)/2³²; four normals
    per Philox block, in that order."""
    keys, counters = torch.tensor([9, 10]), torch.tensor([0, 3])
    z = noise.normal(keys, counters, noise.STREAM_EPSILON, 7, torch.float64)
    w = noise._words(keys, counters, noise.STREAM_EPSILON, 2)
    for b in range(2):
        expected = []
        for j in range(2):
            u = [(int(word[b, j]) + 0.5) / 2**32 for word in w]
            r01, r23 = math.sqrt(-2 * math.log(u[0])), math.sqrt(-2 * math.log(u[2]))
            expected += [r01 * math.cos(2 * math.pi * u[1]), r01 * math.sin(2 * math.pi * u[1]),
                         r23 * math.cos(2 * math.pi * u[3]), r23 * math.sin(2 * math.pi * u[3])]
        np.testing.assert_allclose(z[b].numpy(), expected[:7], rtol=1e-12)


def test_each_sampler_draw_is_the_next_counter_in_the_callers_dtype():
    rnd = noise.PerImageNoise(KEYS)
    for draw in range(3):
        x = rnd.randn_like(torch.zeros(64, 5, dtype=torch.float64))
        assert x.dtype == torch.float64
        assert torch.equal(x, noise.normal(KEYS, torch.full_like(KEYS, draw), noise.STREAM_SAMPLING, 5,
                                           torch.float64))
    assert rnd.randn((64, 2)).dtype == torch.float32 and rnd.draws == 4


def test_balanced_labels():
    labels = noise.balanced_labels(100, 10, 0)
    assert np.bincount(labels).tolist() == [10] * 10 and not np.array_equal(labels, np.arange(100) % 10)


def test_balanced_labels_are_fixed_per_seed_set():
    assert noise.balanced_labels(12, 10, 0).tolist() == noise.balanced_labels(12, 10, 0).tolist()
    assert sorted(noise.balanced_labels(12, 10, 3).tolist()) == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert noise.balanced_labels(12, 10, 0).tolist() != noise.balanced_labels(12, 10, 1).tolist()
    assert noise.balanced_labels(10, 10, 0).tolist() == [int(v) for v in
                                                   np.random.default_rng([0, 12345]).permutation(np.arange(10))]


def test_the_fit_job_does_not_import_the_generation_job():
    """The pilot's labels come from the noise layer, so ied.fit stands beside ied.generate, not above it."""
    import subprocess
    import sys
    loaded = subprocess.run([sys.executable, "-c", "import sys, ied.fit; print('ied.generate' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
