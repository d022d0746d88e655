"""The trained-model files: what is saved is what is loaded, for every predictor; files
of another kind, a newer version or not ours are refused with a message that says why."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from plugins.learn import files, models
from plugins.learn.features import answer_features, arithmetic
from plugins.learn.judge import AnswerScorer
from plugins.learn.router import RouterModel, cheapest_meeting


def _data(n: int = 200, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    weak = (X[:, 0] > 0).astype(float)  # the weak model is right on one half of the space
    Y = np.stack([weak, np.ones(n)], axis=1)
    C = np.tile([0.001, 0.03], (n, 1))
    return X, Y, C


@pytest.mark.parametrize("kind,params", [("knn", {"k": 9}), ("knn", {"ks": [5, 9, 15]}),
                                         ("logreg", {"l2": 1.0}), ("mf", {"rank": 4, "epochs": 50})])
def test_a_router_model_round_trips(tmp_path: Path, kind: str, params: dict) -> None:
    X, Y, C = _data()
    model = RouterModel.fit(X, Y, C, ["cheap", "strong"], kind, params, folds=3)
    path = tmp_path / "router.npz"
    model.save(path)
    back = RouterModel.load(path)
    assert back.models == ["cheap", "strong"]
    np.testing.assert_allclose(back.predict(X[:20]), model.predict(X[:20]), rtol=1e-6)
    assert back.calibrate(keep=0.9) == pytest.approx(model.calibrate(keep=0.9))
    meta = json.loads(str(np.load(path, allow_pickle=False)["__meta__"]))
    assert (meta["format"], meta["version"], meta["kind"]) == ("switchyard.learn", 1, "router")
    assert meta["model"]["kind"] == kind


def test_a_knn_over_several_counts_weighs_the_nearest_neighbours_most() -> None:
    """``ks`` [1, 3]: the nearest neighbour counts for 1/2 + 1/6, the next two for 1/6 each."""
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [-1.0, 0.0]], dtype=np.float32)
    Y = np.array([[1.0], [0.0], [0.0], [0.0]])
    m = models.make("knn", ks=[3, 1]).fit(X, Y)
    assert m.predict(np.array([[1.0, -0.05]]))[0, 0] == pytest.approx(2 / 3)
    assert models.make("knn", k=3).fit(X, Y).predict(np.array([[1.0, -0.05]]))[0, 0] == pytest.approx(1 / 3)


def test_the_model_learns_where_the_cheap_model_is_good_enough() -> None:
    X, Y, C = _data(400)
    model = RouterModel.fit(X, Y, C, ["cheap", "strong"], "logreg", {"l2": 1.0}, folds=1)
    q = model.predict(X)
    picks = cheapest_meeting(q, C, 0.8)
    # cheap where it is right (X[:, 0] > 0), strong elsewhere, for nearly every prompt
    assert np.mean(picks == np.where(X[:, 0] > 0, 0, 1)) > 0.9


def test_files_that_cannot_be_used_are_refused(tmp_path: Path) -> None:
    X, Y, C = _data()
    path = tmp_path / "m.npz"
    RouterModel.fit(X, Y, C, ["a", "b"], "knn", {"k": 3}, folds=1).save(path)
    with pytest.raises(files.ModelFileError, match="not a 'judge' model"):
        AnswerScorer.load(path)
    newer = tmp_path / "newer.npz"
    files.save(newer, "router", {"version": 99}, {})
    with pytest.raises(files.ModelFileError, match="version 99 is newer"):
        RouterModel.load(newer)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(files.ModelFileError, match="not a Switchyard model file"):
        RouterModel.load(junk)
    with pytest.raises(files.ModelFileError, match="no such model file"):
        RouterModel.load(tmp_path / "missing.npz")
    # a pickled object inside is never loaded (allow_pickle=False)
    evil = tmp_path / "evil.npz"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("__meta__.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (), }" + b" " * 60 + b"\n")
    with pytest.raises(files.ModelFileError):
        RouterModel.load(evil)


GOOD = "She has 16 - 3 = <<16-3=13>>13 eggs.\nShe sells 13 * 2 = <<13*2=26>>26 dollars.\n#### 26"
BAD_SUM = "She has 16 - 3 = <<16-3=12>>12 eggs.\nShe sells 12 * 2 = <<12*2=24>>24.\n#### 24"
RAMBLE = "Let us think. The eggs are many. The answer depends on the market and the weather."
DECIMAL = "Each gets 8 / 3 = <<8/3=2.6666666666666665>>2.67 gallons.\n#### 2.67 gallons"


def test_answer_features_read_the_answers_shape_and_arithmetic() -> None:
    assert arithmetic(GOOD) == (4, 0)  # two <<...>> annotations, two "a op b = c"
    assert arithmetic(BAD_SUM)[1] >= 2
    f = dict(zip(["has_final", "is_number", "is_integer"], answer_features("", GOOD)[:3], strict=False))
    assert f == {"has_final": 1.0, "is_number": 1.0, "is_integer": 1.0}
    assert answer_features("", RAMBLE)[0] == 0.0
    assert answer_features("", DECIMAL)[2] == 0.0  # 2.67 is not an integer


def test_an_answer_scorer_round_trips_and_separates_good_from_bad(tmp_path: Path) -> None:
    answers = [GOOD, BAD_SUM, RAMBLE, DECIMAL] * 30
    weak = np.array([1.0, 0.0, 0.0, 0.0] * 30)
    strong = np.ones(len(answers))
    scorer = AnswerScorer.fit([""] * len(answers), answers, weak, strong, l2=1.0,
                              max_escalation=0.8)
    path = tmp_path / "judge.npz"
    scorer.save(path)
    back = AnswerScorer.load(path)
    assert back.threshold == pytest.approx(scorer.threshold)
    assert back.score("", GOOD) == pytest.approx(scorer.score("", GOOD))
    assert back.score("", GOOD) > back.threshold > max(back.score("", a) for a in (BAD_SUM, RAMBLE, DECIMAL))
    assert 0.0 <= back.score("", RAMBLE, [-0.1, -2.5]) <= 1.0  # with log-probabilities too
