"""The word ridge beside the kNN (``plugins.learn.words``, params ``words``): what is saved is
what is loaded, the blend is the stated mix of its parts, and the ``learned`` policy loaded
from such a file routes as the file predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway import Candidate, Constraints, RequestFeatures
from plugins.learn.embed import PromptEncoder
from plugins.learn.files import ModelFileError
from plugins.learn.router import RouterModel
from plugins.learn.words import WordRidge, features
from policies.learned import Learned

HARD = [f"Evaluate the integral of {f} from 0 to {b}." for f, b in
        (("x^2", 3), ("sin x", 2), ("e^x", 1), ("1/x", 5), ("x cos x", 4), ("ln x", 7))]
EASY = ["Hi there, how are you today?", "Say hello to my friend Ana.",
        "Thanks, that was helpful!", "Good morning! Have a nice day.",
        "What a lovely weather, isn't it?", "Tell me something nice."]
PROMPTS = HARD + EASY
Y = np.stack([np.array([0.0] * len(HARD) + [1.0] * len(EASY)), np.ones(len(PROMPTS))], axis=1)
C = np.tile([0.0001, 0.01], (len(PROMPTS), 1))


def test_features_are_the_words_and_their_pairs_of_what_the_router_reads() -> None:
    assert features("Find x. A. 2") == ["find", "x", ".", "a", ".", "2", "find x", "x .", ". a",
                                        "a .", ". 2"]
    assert features("z" * 600 + " tail") == ["z" * 495, "tail", "z" * 495 + " tail"]  # the last 500


def test_the_ridge_learns_which_words_the_cheap_model_fails_on() -> None:
    m = WordRidge(l2=0.1, min_df=1).fit(PROMPTS, Y)
    q = m.predict(["What is the integral of x^3?", "Hello, how are you?"])
    assert q[0, 0] < 0.3 and q[1, 0] > 0.7
    assert np.allclose(q[:, 1], 1.0)
    back = WordRidge.restore(*m.state())
    assert back.vocab == m.vocab and np.allclose(back.predict(PROMPTS), m.predict(PROMPTS))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    encoder = PromptEncoder.fit("distilled", PROMPTS)
    path = tmp_path_factory.mktemp("words") / "router.npz"
    RouterModel.fit(encoder.encode(PROMPTS), Y, C, ["small-model", "big-model"], "knn",
                    {"k": 3, "words": {"l2": 0.1, "share": 0.4}}, folds=3, encoder=encoder,
                    prompts=PROMPTS).save(path)
    return path


def test_a_knn_with_words_round_trips_and_blends_its_parts(model_file: Path) -> None:
    model = RouterModel.load(model_file)
    assert model.predictor.kind == "knn" and model.words is not None
    assert model.meta["model"]["params"]["words"] == {"l2": 0.1, "min_df": 2, "share": 0.4}
    texts = ["Compute the integral of x^4.", "Good evening, my friend!"]
    X = model.encoder.encode(texts)
    expected = 0.6 * model.predictor.predict(X) + 0.4 * model.words.predict(texts)
    assert np.allclose(model.predict(X, texts), expected)
    with pytest.raises(ValueError, match="pass the prompts"):
        model.predict(X)
    assert model.oof["Q"].shape == Y.shape  # out-of-fold predictions of the blend, to calibrate


def test_the_policy_loaded_from_the_file_routes_as_it_predicts(model_file: Path) -> None:
    policy = Learned({"model": str(model_file), "quality_target": 0.7})
    cands = [Candidate.make("cheap", model="small-model", input_usd_per_token=1e-7,
                            output_usd_per_token=2e-7),
             Candidate.make("strong", model="big-model", input_usd_per_token=1e-5,
                            output_usd_per_token=3e-5)]
    for text in ("Evaluate the integral of x^5 from 1 to 2.", "Hello! Have a nice day, Ana."):
        q = policy.model.predict(policy.model.encoder.encode([text]), [text])[0]
        plan = policy.plan(RequestFeatures(endpoint="chat", requested="auto", prompt_tokens=20,
                                           max_tokens=16, text=text), cands, Constraints())
        assert plan.order[0] == ("cheap" if q[0] >= 0.7 else "strong")
        assert f"cheap {q[0]:.2f}" in plan.reason
    hard = policy.plan(RequestFeatures(endpoint="chat", requested="auto", prompt_tokens=20,
                                       max_tokens=16, text="Evaluate the integral of x^5 from 1 to 2."),
                       cands, Constraints())
    assert hard.order == ["strong", "cheap"]


def test_a_file_whose_words_do_not_match_is_refused(model_file: Path, tmp_path: Path) -> None:
    with np.load(model_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model.words.idf"] = arrays["model.words.idf"][:-1]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ModelFileError, match="must match"):
        RouterModel.load(bad)
