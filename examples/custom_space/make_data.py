"""Write a small keyword-spotting-like data set as an .npz odnas reads with ``--data npz:PATH``.

    python examples/custom_space/make_data.py kws.npz

``x`` holds 1x16x16 "spectrogram" patches (float32), ``y`` class ids and ``labels``
their names; each word is a pattern of bands in time, with noise and a random shift.
Your own data goes the same way: arrays ``x`` (N, C, H, W) or (N, H, W) and ``y``,
optionally ``x_val``/``y_val`` for a fixed validation split and ``labels``.
"""

import sys

import numpy as np

WORDS = ("yes", "no", "up", "down")


def make(n_per_class: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(len(WORDS)):
        base = np.zeros((16, 16), np.float32)
        for band in range(4):  # each word: bands at its own frequencies and times
            f = (3 * c + 5 * band) % 16
            base[f, (4 * band + c) % 16:(4 * band + c) % 16 + 3] = 1.0
        for _ in range(n_per_class):
            shift = rng.integers(-2, 3)
            xs.append(np.roll(base, shift, axis=1) + rng.normal(0, 0.35, base.shape).astype(np.float32))
            ys.append(c)
    x = np.stack(xs)[:, None]
    return x.astype(np.float32), np.array(ys, np.int64)


if __name__ == "__main__":
    x, y = make()
    np.savez(sys.argv[1] if len(sys.argv) > 1 else "kws.npz", x=x, y=y, labels=np.array(WORDS))
    print(f"wrote {len(y)} examples of {x.shape[1:]} in {len(WORDS)} classes")
