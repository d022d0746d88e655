"""The commands of issue 14, registered through ``switchyard_register_commands``:

    switchyard eval router   --train FILE --data FILE [--json] [--plot PNG] [--model KIND]
    switchyard eval cascade  --train FILE --data FILE [--json] [--plot PNG] [--embedding yes|no]
    switchyard train router  (--data FILE | --from-ledger LEDGER) --out MODEL [--model KIND]
    switchyard train judge   --data FILE --out MODEL [--keep 0.95 | --max-escalation 0.3]

Files are in the canonical routing format (``plugins.learn.data``). The eval commands fit on
``--train`` and report only on ``--data``; every choice is cross-validated on ``--train``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway import RegisterCommand, hookimpl
from plugins.learn import data as datafile
from plugins.learn.embed import DEFAULT_EMBEDDER, EMBEDDERS
from plugins.learn.files import ModelFileError
from plugins.learn.words import WORDS, WORDS_DEFAULT


def _log(quiet: bool) -> Any:
    return (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr, flush=True))


def _common(p: argparse.ArgumentParser, train: bool = True) -> None:
    if train:
        p.add_argument("--train", required=True, type=Path, help="fit on this file")
        p.add_argument("--data", required=True, type=Path, help="report on this file")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--plot", type=Path, help="draw the quality-cost curve into this PNG")
    p.add_argument("--cache", type=Path, help="embedding cache folder "
                   "(default ~/.cache/switchyard/embeddings)")


def _fail(e: Exception) -> int:
    print(f"switchyard: {e}", file=sys.stderr)
    return 2


def _kind(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=["auto", "knn", "knn+words", "logreg", "mf"], default="auto",
                   help="the predictor (auto: chosen by cross-validation on the training data; "
                   "knn+words: the kNN beside a ridge regression on the prompt's words)")
    p.add_argument("--embedder", choices=list(EMBEDDERS), default=DEFAULT_EMBEDDER,
                   help="prompt vectors: MiniLM sentence embeddings (minilm: one forward pass "
                   "per new prompt, 10-50 ms; minilm-int8: the same model with int8 weights, "
                   "about half the CPU); with no forward pass on the request path (about 1 ms), "
                   "a bag of its distilled static table fitted to its sentence vectors "
                   "(distilled) or of its input token embeddings (static); or distilled and "
                   "minilm-int8 side by side (distilled+int8)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="minilm-int8: embed the first N tokens of what the router reads (a "
                   "prompt's last 500 characters; default: all of them, at most the model's 256)")


def _params(kind: str, examples: int) -> tuple[str | None, dict[str, Any] | None]:
    """The defaults of ``--model KIND`` (cross-validation's choices on MMLU); kNN's k at
    most a fifth of the training examples (else every prompt gets the same neighbours)."""
    cap = max(1, examples // 5)
    defaults: dict[str, dict[str, Any]] = {
        "knn": {"ks": sorted({min(k, cap) for k in (100, 150, 200)})}, "logreg": {"l2": 30.0},
        "mf": {"rank": 16}}
    defaults["knn+words"] = {**defaults["knn"], WORDS: dict(WORDS_DEFAULT)}
    return (None, None) if kind == "auto" else (kind.split("+")[0], defaults[kind])


def configure_eval_router(p: argparse.ArgumentParser) -> None:
    _common(p)
    _kind(p)


def run_eval_router(args: argparse.Namespace) -> int:
    from plugins.learn.evaluate import eval_router

    try:
        train, data = datafile.load(args.train), datafile.load(args.data)
        kind, params = _params(args.model, len(train))
        out = eval_router(train, data, kind=kind, params=params, embedder=args.embedder,
                          max_tokens=args.max_tokens, cache=args.cache, log=_log(args.json))
    except datafile.DataError as e:
        return _fail(e)
    return _report(out, args, "router", "strong-model calls (%)")


def configure_eval_cascade(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--embedding", choices=["auto", "yes", "no"], default="auto",
                   help="the judge also reads MiniLM(prompt + answer) (auto: cross-validated)")


def run_eval_cascade(args: argparse.Namespace) -> int:
    from plugins.learn.evaluate import eval_cascade

    try:
        train, data = datafile.load(args.train), datafile.load(args.data)
        emb = None if args.embedding == "auto" else args.embedding == "yes"
        out = eval_cascade(train, data, embedding=emb, cache=args.cache, log=_log(args.json))
    except datafile.DataError as e:
        return _fail(e)
    return _report(out, args, "cascade", "escalated to the strong model (%)")


def _report(out: dict[str, Any], args: argparse.Namespace, what: str, xlabel: str) -> int:
    if args.plot:
        from plugins.learn.plot import draw

        draw(out, args.plot, f"{what} on {args.data.name}", xlabel)
    _print(out, args.json)
    return 0


def _print(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=1))
        return
    for key in ("apgr", "cpt50", "cpt80"):
        if out.get(key) is not None:
            print(f"{key}: {out[key]:.4f}")
    if "aiq" in out:
        print(f"aiq: router {out['aiq']['router']:.4f}, zero router {out['aiq']['zero_router']:.4f}")
    for name, ref in (out.get("references") or {}).items():
        print(f"{name}: apgr {ref['apgr']:.4f}, cpt50 {ref['cpt50']:.4f}, cpt80 {ref['cpt80']:.4f}")


def configure_train_router(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="a routing data file (canonical format)")
    src.add_argument("--from-ledger", type=Path, metavar="LEDGER",
                     help="the gateway's ledger: its cascade rows kept with `cascade.learn: true`")
    p.add_argument("--out", required=True, type=Path, help="the model file to write")
    p.add_argument("--dump", type=Path, help="also write the training table (JSONL)")
    _kind(p)
    _common(p, train=False)


def run_train_router(args: argparse.Namespace) -> int:
    from plugins.learn.embed import PromptEncoder
    from plugins.learn.evaluate import select_router
    from plugins.learn.ledger import from_ledger, to_jsonl
    from plugins.learn.router import RouterModel

    log = _log(False)
    try:
        table = from_ledger(args.from_ledger) if args.from_ledger else datafile.load(args.data)
    except datafile.DataError as e:
        return _fail(e)
    if args.dump:
        to_jsonl(table, args.dump)
    encoder = PromptEncoder.fit(args.embedder, table.prompts, disk_cache=True,
                                cache=args.cache, max_tokens=args.max_tokens)
    X = encoder.encode(table.prompts, disk_cache=True, cache=args.cache)
    kind, params = _params(args.model, len(table))
    if kind is None:
        if len(table) >= 50:
            kind, params, _ = select_router(table, X, log=log)
        else:  # too few to cross-validate: the simplest
            kind, params = "knn", {"k": max(1, min(50, len(table) // 2))}
    model = RouterModel.fit(X, table.quality, table.cost, table.models, kind, params or {},
                            folds=5 if len(table) >= 10 else 1, encoder=encoder,
                            prompts=table.prompts)
    model.meta["source"] = str(args.from_ledger or args.data)
    model.save(args.out)
    log(f"wrote {args.out}: {kind} {params} over {len(table)} prompts, models {table.models}")
    return 0


def configure_train_judge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path,
                   help="a routing data file with the cheap model's responses")
    p.add_argument("--out", required=True, type=Path, help="the model file to write")
    p.add_argument("--embedding", choices=["auto", "yes", "no"], default="auto")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--keep", type=float, default=0.95,
                      help="threshold: keep this fraction of the strong model's quality (default 0.95)")
    goal.add_argument("--max-escalation", type=float,
                      help="threshold: escalate at most this share of requests")
    _common(p, train=False)


def run_train_judge(args: argparse.Namespace) -> int:
    from plugins.learn.evaluate import fit_judge, select_judge

    log = _log(False)
    try:
        table = datafile.load(args.data)
        if args.embedding == "auto":
            opts, _ = select_judge(table, args.cache, log=log)
        else:
            opts = {"embedding": args.embedding == "yes", "l2": 10.0}
        goal = ({"max_escalation": args.max_escalation} if args.max_escalation is not None
                else {"keep": args.keep})
        scorer = fit_judge(table, opts, args.cache, **goal)
    except (datafile.DataError, ModelFileError) as e:
        return _fail(e)
    scorer.save(args.out)
    log(f"wrote {args.out}: threshold {scorer.threshold:.4f} ({opts}, {scorer.meta['goal']})")
    return 0


@hookimpl(trylast=True)
def switchyard_register_commands(register: RegisterCommand) -> None:
    register("eval router", configure_eval_router, run_eval_router,
             help="fit the learned pre-router on --train, report APGR/CPT/AIQ on --data")
    register("eval cascade", configure_eval_cascade, run_eval_cascade,
             help="fit the cascade's answer scorer on --train, report APGR/CPT on --data")
    register("train router", configure_train_router, run_train_router,
             help="fit the `learned` policy's model on a data file or the gateway's ledger")
    register("train judge", configure_train_judge, run_train_judge,
             help="fit the `scorer` judge's model (AnswerScorer) on a data file")
