"""Training-time augmentation: time stretch in whole frames, amplitude scaling about the mean."""

import numpy as np

from rnnserve.models.augment import augment_batch, stretch, stretch_frames


def test_a_frame_stretch_moves_whole_frames_and_keeps_the_partial_last_frame():
    seq = np.arange(20, dtype=np.float32).reshape(10, 2)  # 10 steps: frames of 3 -> 3 whole + 1 step
    fill = np.array([-1.0, -1.0], dtype=np.float32)
    assert np.array_equal(stretch_frames(seq, 4, 3, fill), seq)  # same frame count: unchanged
    longer = stretch_frames(seq, 6, 3, fill)
    assert longer.shape == (16, 2)  # 6 frames, the last holding 1 step as before
    np.testing.assert_array_equal(longer[:3], seq[:3])  # the first frame is kept as a whole
    np.testing.assert_array_equal(longer[-1], seq[-1])  # so is the last step
    # inside a frame the steps keep their spacing: frames are interpolated as whole vectors
    frames = longer[:15].reshape(5, 3, 2)
    np.testing.assert_allclose(np.diff(frames[:4, :, 0], axis=1), 2.0, atol=1e-5)
    np.testing.assert_array_equal(stretch_frames(seq, 7, 1, fill), stretch(seq, 7))


def test_augment_batch_stretches_in_frames_and_scales_about_the_mean():
    rng = np.random.default_rng(0)
    seqs = [np.ones((12, 2), dtype=np.float32) * k for k in (1, 2)]
    mean = np.zeros(2, dtype=np.float32)
    out = augment_batch(seqs, rng, warp=0.5, scale=0.0, mean=mean, frame=4)
    assert all(len(s) % 4 == 0 for s in out) and len({len(s) for s in out}) == 1
    scaled = augment_batch(seqs, rng, warp=0.0, scale=0.5, mean=mean)
    assert all(len(s) == 12 for s in scaled)
    assert all(0.5 * k <= s[0, 0] <= 1.5 * k for s, k in zip(scaled, (1, 2), strict=True))
