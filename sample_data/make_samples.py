"""Recreate the bundled robot-tools sample data next to this script.

Run ``python sample_data/make_samples.py`` to (re)write:

* ``robot_tools.csv`` / ``robot_tools.parquet``: 1,000 camera shots of a robot
  identifying tools (wrench / screwdriver / hammer) with model A's predicted
  probabilities. The ``top`` camera is noticeably worse, wrench and screwdriver
  get confused more than hammer, and ten confident mistakes are planted
  (three with a true-class probability of exactly 0.000000).
* ``robot_tools_logits.csv``: model A's predictions as logits (softmax of
  these reproduces the probabilities above).
* ``robot_tools_model_b.csv``: a second, slightly better calibrated model.
* ``robot_tools_annotators.csv``: soft labels from 5 human annotators, rows
  shuffled so that pairing by ``id`` matters.

Probabilities are written with 6 decimals and each row sums to 1 after
rounding. The output is deterministic: all randomness comes from one
``numpy.random.default_rng`` with a fixed seed.
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
CLASSES = ["wrench", "screwdriver", "hammer"]
CAMERAS = ["left", "right", "top"]
N = 1000
PARTNER = np.array([1, 0, 2])  # class each one is most easily mistaken for
MARGIN = np.array([3.4, 3.4, 2.3])  # true-class logit boost, per camera
HAMMER_BONUS = 0.7  # hammers are the easiest tool to tell apart
NOISE = np.array([1.0, 1.0, 1.4])  # logit noise, per camera

rng = np.random.default_rng(20240611)
ids = [f"shot-{i:04d}" for i in range(1, N + 1)]
label = rng.choice(3, size=N, p=[0.40, 0.35, 0.25])
camera = rng.choice(3, size=N, p=[0.37, 0.37, 0.26])
rows = np.arange(N)


def raw_logits(noise):
    """True-class boost plus per-camera noise; wrench/screwdriver look alike."""
    z = noise * NOISE[camera][:, None]
    z[rows, label] += MARGIN[camera] + HAMMER_BONUS * (label == 2)
    alike = label != 2
    z[rows[alike], PARTNER[label[alike]]] += rng.normal(1.0, 0.8, alike.sum())
    return z


noise_a = rng.normal(size=(N, 3))
# Model B shares A's hard shots but is a little less noisy and less sharp.
noise_b = 0.8 * noise_a + 0.5 * rng.normal(size=(N, 3))
logits_a = 1.8 * raw_logits(noise_a)
logits_b = 1.5 * raw_logits(noise_b)

# Planted confident mistakes: A is sure of the wrong tool, B less so; the
# first three give the true tool a logit of -30, i.e. probability 0.000000.
planted = rng.choice(N, size=10, replace=False)
for k, i in enumerate(planted):
    wrong = PARTNER[label[i]] if label[i] != 2 else rng.integers(2)
    for z, scale in ((logits_a, 1.0), (logits_b, 0.5)):
        z[i] = scale * rng.normal(0.0, 0.5, 3)
        z[i, wrong] += scale * rng.uniform(5.0, 7.0)
        z[i, label[i]] = -30.0 if k < 3 else z[i, label[i]] - scale * 1.5
logits_a, logits_b = np.round(logits_a, 6), np.round(logits_b, 6)


def probabilities(z):
    """Softmax rounded to 6 decimals; the largest absorbs the rounding error."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p = np.round(p / p.sum(axis=1, keepdims=True), 6)
    top = p.argmax(axis=1)
    p[rows, top] = 0.0
    p[rows, top] = np.round(1.0 - p.sum(axis=1), 6)
    return p


def frame(values, prefix=""):
    cols = {"id": ids, "camera": np.array(CAMERAS)[camera]}
    cols["label"] = np.array(CLASSES)[label]
    cols.update({prefix + c: values[:, j] for j, c in enumerate(CLASSES)})
    return pd.DataFrame(cols)


def annotators(p_true):
    """Votes of 5 annotators; hard shots (and wrench vs screwdriver) split more."""
    votes = np.zeros((N, 3), dtype=int)
    votes[rows, label] = 5
    p_split = (0.08 + 0.5 * (1.0 - p_true)) * np.where(label == 2, 0.4, 1.0)
    split = rng.random(N) < p_split
    for i in np.flatnonzero(split):
        other = PARTNER[label[i]] if label[i] != 2 else rng.integers(2)
        moved = rng.choice([1, 2], p=[0.6, 0.4])  # 4/1 or 3/2
        votes[i, label[i]] -= moved
        votes[i, other] += moved
    soft = pd.DataFrame(votes / 5, columns=CLASSES)
    soft.insert(0, "id", ids)
    return soft.iloc[rng.permutation(N)]


probs_a, probs_b = probabilities(logits_a), probabilities(logits_b)
model_a = frame(probs_a, "p_")
model_a.to_csv(HERE / "robot_tools.csv", index=False, float_format="%.6f")
model_a.to_parquet(HERE / "robot_tools.parquet", engine="pyarrow", index=False)
frame(probs_b, "p_").to_csv(
    HERE / "robot_tools_model_b.csv", index=False, float_format="%.6f"
)
frame(logits_a).drop(columns="camera").to_csv(
    HERE / "robot_tools_logits.csv", index=False, float_format="%.6f"
)
annotators(probs_a[rows, label]).to_csv(
    HERE / "robot_tools_annotators.csv", index=False, float_format="%.1f"
)

# The state of a run over robot_tools.csv, for `nll merge` (its --help examples).
import nllcli  # noqa: E402

nllcli.score(str(HERE / "robot_tools.csv"), save_state=str(HERE / "robot_tools.nllstate"))
