"""Write the sample files of `nll calibrate` next to this script (the other samples are untouched).

Run ``python sample_data/make_calibration_samples.py`` to (re)write:

* ``robot_tools_val_logits.csv`` / ``robot_tools_test_logits.csv``: 1,000 validation and 1,000
  test shots of the robot-tools setting, as logits of a deliberately overconfident model. The
  labels are drawn from softmax(u), u the logits of a model that is calibrated by construction;
  the file holds 2.5 * u, so temperature scaling should find T close to 2.5 and remove most of
  the calibration error.
* ``digits_gbm_val_logits.csv`` / ``digits_gbm_test_logits.csv``: scikit-learn's
  HistGradientBoostingClassifier (300 rounds, learning rate 0.3) trained on 900 images of the
  digits data set (load_digits), its raw scores (logits, decision_function) on 450 validation and
  447 test images: a real model, overconfident after fitting its training set perfectly.

Deterministic: one numpy seed, fixed scikit-learn random_state.
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
CLASSES = ["wrench", "screwdriver", "hammer"]
CAMERAS = ["left", "right", "top"]
OVERCONFIDENCE = 2.5  # the file's logits are this multiple of calibrated ones


def robot_tools(rng: np.random.Generator, n: int, prefix: str) -> pd.DataFrame:
    """Calibrated logits u (the top camera noisier), labels drawn from softmax(u), logits 2.5 u."""
    camera = rng.choice(3, size=n, p=[0.37, 0.37, 0.26])
    tool = rng.choice(3, size=n, p=[0.40, 0.35, 0.25])  # the tool the scene favours
    u = rng.normal(0.0, 0.6, size=(n, 3))
    u[np.arange(n), tool] += np.where(camera == 2, 1.2, 2.0)
    p = np.exp(u - u.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    label = np.array([rng.choice(3, p=row) for row in p])
    z = np.round(OVERCONFIDENCE * u, 6)
    frame = pd.DataFrame({"id": [f"{prefix}-{i:04d}" for i in range(1, n + 1)],
                          "camera": np.array(CAMERAS)[camera], "label": np.array(CLASSES)[label]})
    for j, name in enumerate(CLASSES):
        frame[name] = z[:, j]
    return frame


def digits() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gradient boosting on 900 digits images; its logits on the validation and test images."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x / 16.0, y, train_size=900, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, train_size=450, random_state=0, stratify=y_rest)
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.3, random_state=0)
    model.fit(x_train, y_train)

    def frame(x_part, y_part, prefix):
        logits = model.decision_function(x_part)  # the raw scores whose softmax is predict_proba
        out = pd.DataFrame({"id": [f"{prefix}-{i:04d}" for i in range(1, len(y_part) + 1)], "label": y_part})
        for k in range(10):
            out[f"digit_{k}"] = np.round(logits[:, k], 8)
        return out

    return frame(x_val, y_val, "val"), frame(x_test, y_test, "test")


def main() -> None:
    rng = np.random.default_rng(20261202)
    robot_tools(rng, 1000, "val").to_csv(HERE / "robot_tools_val_logits.csv", index=False)
    robot_tools(rng, 1000, "test").to_csv(HERE / "robot_tools_test_logits.csv", index=False)
    val, test = digits()
    val.to_csv(HERE / "digits_gbm_val_logits.csv", index=False)
    test.to_csv(HERE / "digits_gbm_test_logits.csv", index=False)


if __name__ == "__main__":
    main()
