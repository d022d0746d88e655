"""The ``learned`` policy routes as its model predicts: a kNN router trained (on real MiniLM
embeddings, fp32 and int8, on the static bag of MiniLM's token embeddings, on the bag of its
distilled static table, and on that bag beside int8 MiniLM) where the small model fails
arithmetic word problems and handles small talk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway import Candidate, Constraints, RequestFeatures
from plugins.learn.embed import PromptEncoder
from plugins.learn.router import RouterModel
from policies.learned import Learned

MATH = [f"A farmer has {a} sheep and buys {b} more each week for {c} weeks. How many sheep "
        f"does he have at the end?" for a, b, c in ((12, 3, 4), (40, 7, 2), (5, 11, 6), (9, 2, 8))] + [
    "Solve for x: 3x + 7 = 25, then compute x squared minus 4.",
    "A train leaves at 3 pm going 60 mph; another at 4 pm going 80 mph. When does it catch up?",
]
CHAT = ["Hi there, how are you today?", "Say hello to my friend Ana.",
        "Thanks, that was helpful!", "Good morning! Have a nice day.",
        "What a lovely weather, isn't it?", "Tell me something nice."]


@pytest.fixture(scope="module", params=["minilm", "minilm-int8", "static", "distilled",
                                        "distilled+int8"])
def model_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prompts = MATH + CHAT
    encoder = PromptEncoder.fit(request.param, prompts)
    X = encoder.encode(prompts)
    small_ok = np.array([0.0] * len(MATH) + [1.0] * len(CHAT))
    Y = np.stack([small_ok, np.ones(len(prompts))], axis=1)
    C = np.tile([0.0001, 0.01], (len(prompts), 1))
    path = tmp_path_factory.mktemp("learned") / "router.npz"
    RouterModel.fit(X, Y, C, ["small-model", "big-model"], "knn", {"k": 3}, folds=3,
                    encoder=encoder).save(path)
    return path


CANDIDATES = [
    Candidate.make("cheap", model="small-model", input_usd_per_token=1e-7, output_usd_per_token=2e-7),
    Candidate.make("strong", model="big-model", input_usd_per_token=1e-5, output_usd_per_token=3e-5),
]


def _req(text: str) -> RequestFeatures:
    return RequestFeatures(endpoint="chat", requested="auto", prompt_tokens=30, max_tokens=64,
                           text=text)


def test_it_sends_each_prompt_where_its_model_predicts(model_file: Path) -> None:
    policy = Learned({"model": str(model_file), "quality_target": 0.7})
    hard = policy.plan(_req("A shop sells 14 apples a day for 9 days and 6 more on Sunday. How many apples in all?"),
                       CANDIDATES, Constraints())
    easy = policy.plan(_req("Hello! How are you doing this morning?"), CANDIDATES, Constraints())
    assert hard.order == ["strong", "cheap"]  # the other candidate stays as the fallback
    assert easy.order == ["cheap", "strong"]
    assert hard.policy == "learned" and "predicted quality" in hard.reason
    assert set(easy.predictions) == {"cheap", "strong"}  # the usual predictions, for the ledger


def test_a_cost_weight_trades_quality_for_cost(model_file: Path) -> None:
    hard = _req("Compute 17 times 23 and then subtract 45; what is the result?")
    frugal = Learned({"model": str(model_file), "cost_weight": 1e6})
    lavish = Learned({"model": str(model_file), "cost_weight": 0.0})
    assert frugal.plan(hard, CANDIDATES, Constraints()).order[0] == "cheap"
    assert lavish.plan(hard, CANDIDATES, Constraints()).order[0] == "strong"


def test_hard_constraints_still_apply(model_file: Path) -> None:
    policy = Learned({"model": str(model_file), "quality_target": 0.7})
    hard = _req("A train goes 300 miles at 50 mph and back at 60 mph. How long in total?")
    plan = policy.plan(hard, [CANDIDATES[0], Candidate.make("strong", model="big-model",
                                                           healthy=False)], Constraints())
    assert plan.order == ["cheap"] and "strong" in plan.rejected


def test_candidates_the_file_does_not_know_come_last(model_file: Path) -> None:
    other = Candidate.make("other", model="mystery")
    plan = Learned({"model": str(model_file), "models": {"cheap": "small-model"}}).plan(
        _req("Hi!"), [other, *CANDIDATES], Constraints())
    assert plan.order[-1] == "other"


@pytest.mark.parametrize("options,message", [
    ({}, "'model'"),
    ({"model": "/nonexistent.npz"}, "no such model file"),
    ({"model": "M", "keep": 0.9, "cost_weight": 1.0}, "give one of"),
    ({"model": "M", "quality_target": 2}, "quality_target"),
    ({"model": "M", "models": {"cheap": "not-in-file"}}, "'models'"),
    ({"model": "M", "wieght": 1}, "unknown option"),
])
def test_bad_options_stop_start_up(model_file: Path, options: dict, message: str) -> None:
    if options.get("model") == "M":
        options = {**options, "model": str(model_file)}
    with pytest.raises(ValueError, match=message):
        Learned(options)


def test_a_distilled_file_embeds_as_it_was_trained_and_nearer_minilm(tmp_path: Path) -> None:
    from plugins.learn.embed import StaticTable, encode

    prompts = MATH + CHAT
    encoder = PromptEncoder.fit("distilled", prompts)
    X = encoder.encode(prompts)
    Y = np.stack([np.array([0.0] * len(MATH) + [1.0] * len(CHAT)), np.ones(len(prompts))], axis=1)
    RouterModel.fit(X, Y, np.tile([0.0001, 0.01], (len(prompts), 1)), ["a", "b"], "knn",
                    {"k": 3}, folds=1, encoder=encoder).save(tmp_path / "r.npz")
    loaded = RouterModel.load(tmp_path / "r.npz").encoder
    assert loaded.kind == "distilled"
    assert np.allclose(loaded.encode(prompts), X, atol=1e-6)  # serving sees training's vectors
    static = StaticTable.shared()
    unfitted = static.encode(prompts, encoder.idf, static.distilled())  # type: ignore[arg-type]
    target = encode(prompts)
    assert np.mean(np.sum(X * target, axis=1)) > np.mean(np.sum(unfitted * target, axis=1)) + 0.05


def test_a_distilled_file_whose_rows_do_not_fit_stops_start_up(tmp_path: Path) -> None:
    prompts = MATH + CHAT
    good = PromptEncoder.fit("distilled", prompts)
    bad = PromptEncoder("distilled", good.idf, np.array([10**6]), np.zeros((1, 384), np.float16))
    RouterModel.fit(good.encode(prompts), np.ones((len(prompts), 2)),
                    np.tile([0.0001, 0.01], (len(prompts), 1)), ["a", "b"], "knn", {"k": 3},
                    folds=3, encoder=bad).save(tmp_path / "r.npz")
    with pytest.raises(ValueError, match="fitted rows do not match"):
        Learned({"model": str(tmp_path / "r.npz")})


def test_a_blend_is_its_parts_side_by_side(tmp_path: Path) -> None:
    from plugins.learn.embed import encode

    prompts = MATH + CHAT
    encoder = PromptEncoder.fit("distilled+int8", prompts)
    X = encoder.encode(prompts)
    assert X.shape == (len(prompts), 768) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    bag = PromptEncoder("distilled", encoder.idf, encoder.rows, encoder.fitted).encode(prompts)
    assert np.allclose(X[:, :384] * np.sqrt(2), bag, atol=1e-5)
    assert np.allclose(X[:, 384:] * np.sqrt(2), encode(prompts, "minilm-int8"), atol=1e-5)
    RouterModel.fit(X, np.ones((len(prompts), 2)), np.tile([0.0001, 0.01], (len(prompts), 1)),
                    ["a", "b"], "knn", {"k": 3}, folds=1, encoder=encoder).save(tmp_path / "r.npz")
    loaded = RouterModel.load(tmp_path / "r.npz").encoder
    assert loaded.kind == "distilled+int8" and np.allclose(loaded.encode(prompts), X, atol=1e-6)


def test_an_int8_token_cap_travels_in_the_file(tmp_path: Path) -> None:
    prompts = MATH + CHAT
    encoder = PromptEncoder.fit("minilm-int8", prompts, max_tokens=8)
    X = encoder.encode(prompts)
    assert not np.allclose(X, PromptEncoder("minilm-int8").encode(prompts), atol=1e-3)
    RouterModel.fit(X, np.ones((len(prompts), 2)), np.tile([0.0001, 0.01], (len(prompts), 1)),
                    ["a", "b"], "knn", {"k": 3}, folds=1, encoder=encoder).save(tmp_path / "r.npz")
    loaded = RouterModel.load(tmp_path / "r.npz").encoder
    assert loaded.max_tokens == 8 and np.allclose(loaded.encode(prompts), X, atol=1e-6)
    with pytest.raises(ValueError, match="token cap"):
        PromptEncoder("minilm", max_tokens=8)
