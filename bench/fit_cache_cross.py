"""Fit the semantic cache's cross-encoder on the QQP TRAIN half and write
plugins/cache/cross_qqp.npz (a LoRA delta over all-MiniLM-L6-v2 and a classification head).

The cross-encoder reads the two prompts together, ``[CLS] a [SEP] b [SEP]``, through
MiniLM's six layers with low-rank adapters (LoRA, rank ``--rank``) on every attention
projection and feed-forward matrix, mean-pools the last layer over the tokens and a linear
head gives the logit that the two ask the same thing. Only the adapters and the head are
trained (AdamW, binary cross-entropy, batches of similar length, each pair in a random order
so that the two orders are learnt alike), so the shipped file is small.

The QQP train half is split again by a hash (``validation``: a tenth of it): the run trains
on the rest and scores the validation slice after each epoch; the slice's scores are kept
(``--val-out``) to choose the calibration, the cosine floor and the combination
(``--choose``). No test half, no held-out set and no GPTCache pair is read.

    nice -n 5 python bench/fit_cache_cross.py --limit 2000 --epochs 1   # speed first
    python bench/fit_cache_cross.py --minutes 38 --epochs 2 --out /tmp/cross.npz \
        --val-out /tmp/val.npz                          # what made cross_qqp.npz
    python bench/fit_cache_cross.py --choose /tmp/val.npz --weights /tmp/cross.npz \
        --floor-miss 0.01                               # one order, floor, calibration

On 2 shared CPU cores (bfloat16 autocast: 1.7x faster than float32 there) the shipped file
took 39 minutes: 2,157 steps of 32 pairs (1.9 passes over 36,227 pairs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qqp_pairs import DEFAULT, pairs

from plugins.cache.cross import CROSS_FILE, MAX_TOKENS, TARGETS, pair_tokenizer
from plugins.embeddings import minilm_path


def is_validation(a: str, b: str) -> bool:
    """A tenth of the train half, by a hash of its own (the split's hash is even there)."""
    return int(hashlib.sha256(("validation\n" + a + "\n" + b).encode()).hexdigest(), 16) % 10 == 0


def build(rank: int, alpha: float, dropout: float) -> Any:
    import torch
    from torch import nn
    from transformers import AutoModel

    class LoRA(nn.Module):
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base = base
            for p in base.parameters():
                p.requires_grad_(False)
            self.a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
            self.b = nn.Parameter(torch.zeros(base.out_features, rank))
            self.scale = alpha / rank
            self.drop = nn.Dropout(dropout)

        def forward(self, x: Any) -> Any:
            return self.base(x) + (self.drop(x) @ self.a.T @ self.b.T) * self.scale

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True,
                                                  attn_implementation="eager")
            for p in self.bert.parameters():
                p.requires_grad_(False)
            for layer in self.bert.encoder.layer:
                for name in TARGETS:
                    parent = layer
                    *path, leaf = name.split(".")
                    for part in path:
                        parent = getattr(parent, part)
                    setattr(parent, leaf, LoRA(getattr(parent, leaf)))
            self.drop = nn.Dropout(0.1)
            self.head = nn.Linear(self.bert.config.hidden_size, 1)

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            h = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return self.head(self.drop(pooled)).squeeze(-1)

    return Cross()


def delta(model: Any) -> dict[str, np.ndarray]:
    """The trained parameters, as plugins/cache/cross.py reads them."""
    out: dict[str, np.ndarray] = {}
    for i, layer in enumerate(model.bert.encoder.layer):
        for name in TARGETS:
            mod = layer
            for part in name.split("."):
                mod = getattr(mod, part)
            out[f"{i}.{name}.a"] = mod.a.detach().numpy().astype(np.float32)
            out[f"{i}.{name}.b"] = (mod.b.detach().numpy() * mod.scale).astype(np.float32)
    out["head.weight"] = model.head.weight.detach().numpy().reshape(-1).astype(np.float32)
    out["head.bias"] = model.head.bias.detach().numpy().reshape(-1).astype(np.float32)
    return out


def batches(enc: list[Any], labels: list[float], size: int, shuffle: bool,
            rng: random.Random) -> list[tuple[Any, ...]]:
    import torch

    order = sorted(range(len(enc)), key=lambda i: len(enc[i].ids))
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    if shuffle:
        rng.shuffle(groups)
    out = []
    for g in groups:
        n = max(len(enc[i].ids) for i in g)
        ids = np.zeros((len(g), n), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for r, i in enumerate(g):
            e = enc[i]
            ids[r, :len(e.ids)] = e.ids
            types[r, :len(e.ids)] = e.type_ids
            mask[r, :len(e.ids)] = 1
        out.append((torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types),
                    torch.tensor([labels[i] for i in g]), g))
    return out


def score(model: Any, enc: list[Any], size: int = 64, bf16: bool = True) -> np.ndarray:
    import torch

    model.eval()
    out = np.zeros(len(enc), dtype=np.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for ids, mask, types, _, g in batches(enc, [0.0] * len(enc), size, False, random.Random(0)):
            out[g] = model(ids, mask, types).float().numpy()
    model.train()
    return out


def platt(z: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Logistic calibration of logits ``z`` on labels ``y``: (scale, bias) by Newton."""
    w = np.array([1.0, 0.0])
    x = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -40, 40)))
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, x.T @ (p - y))
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


def at(p: np.ndarray, y: np.ndarray, t: float) -> dict[str, float]:
    hit = p >= t
    tp = float((hit & (y > 0)).sum())
    prec, rec = tp / max(float(hit.sum()), 1.0), tp / max(float(y.sum()), 1.0)
    return {"precision": round(prec, 4), "recall": round(rec, 4),
            "f1": round(2 * prec * rec / max(prec + rec, 1e-12), 4),
            "hit_rate": round(float(hit.mean()), 4)}


def choose(args: argparse.Namespace) -> int:
    """From the validation slice's logits (``--choose``, what a training run kept with
    ``--val-out``): the decision as the cache makes it (vetoes; the cross-encoder for a pair
    whose cosine reaches the floor; the vector verifier below it), for each way of reading
    the pair (one order, or both orders' logits averaged) and each floor (the cosine below
    which that share of the slice's duplicates fall). Each figure is 2-fold cross-fitted
    (each half calibrated on the other). With ``--weights``, the chosen ``--symmetric``,
    ``--floor-miss`` and ``--wrong-hit-cost`` are written into ``--out`` with the
    calibration fitted on the whole slice."""
    from plugins.cache.decide import features, load_verifier, parse, vetoes
    from plugins.cache.evaluate import vectors

    z = np.load(args.choose, allow_pickle=False)
    a, b, y = [str(t) for t in z["a"]], [str(t) for t in z["b"]], np.asarray(z["y"])
    vec = vectors(a + b, args.cache_dir)
    cos = np.array([float(vec[s] @ vec[t]) for s, t in zip(a, b, strict=True)])
    lr = load_verifier(cross=Path("/nonexistent"))  # the vector verifier alone
    vetoed = np.zeros(len(y), dtype=bool)
    p_vec = np.zeros(len(y))
    for i, (s, t) in enumerate(zip(a, b, strict=True)):
        pa, pb = parse(s), parse(t)
        vetoed[i] = bool(vetoes(pa, pb))
        p = lr.probability(features(pa, pb, cos[i], align=lr.reads_alignment), vec[s], vec[t])
        p_vec[i] = p * 0.25 if vetoed[i] else p
    half = np.array([int(hashlib.sha256(s.encode()).hexdigest(), 16) % 2 for s in a])
    threshold = args.wrong_hit_cost / (1 + args.wrong_hit_cost)
    report: dict[str, Any] = {
        "pairs": len(y), "duplicates": int(y.sum()), "threshold": round(threshold, 4),
        "vector_verifier (fitted on these pairs too)": at(p_vec, y, threshold)}
    dup_cos = np.sort(cos[y > 0])

    def floor_at(miss: float) -> float:
        return float(dup_cos[int(miss * len(dup_cos))]) - 1e-6 if miss else -1.0

    for mode in ("ab", "both"):
        logit = z["ab"] if mode == "ab" else (z["ab"] + z["ba"]) / 2
        cal = np.zeros(len(y))
        for h in (0, 1):
            sc, bi = platt(logit[half != h], y[half != h])
            cal[half == h] = 1 / (1 + np.exp(-(sc * logit[half == h] + bi)))
        report[f"{mode}: cross-encoder alone"] = {
            **at(cal, y, threshold), **{f"at {u}": at(cal, y, u) for u in (0.5, 0.75, 0.8)}}
        for miss in (0.0, 0.005, 0.01, 0.02, 0.05):
            floor = floor_at(miss)
            above = (cos >= floor) & ~vetoed
            p = np.where(above, cal, p_vec)
            report[f"{mode}: floor {floor:.3f} ({miss:.1%} of duplicates below)"] = {
                **at(p, y, threshold), "cross_encoder_share": round(float(above.mean()), 4),
                **{f"at {u}": at(p, y, u) for u in (0.75, 0.8)}}
    print(json.dumps(report, indent=1))
    if args.weights:
        logit = (z["ab"] + z["ba"]) / 2 if args.symmetric else z["ab"]
        sc, bi = platt(logit, y)
        with np.load(args.weights, allow_pickle=False) as w:
            arrays = {k: w[k] for k in w.files if k != "meta"}
            meta = json.loads(str(w["meta"]))
        floor = floor_at(args.floor_miss)
        meta.update({
            "calibration": [round(sc, 6), round(bi, 6)], "symmetric": args.symmetric,
            "floor": round(floor, 6), "threshold": round(threshold, 6),
            "threshold_rule": f"a wrong hit costs {args.wrong_hit_cost:g} misses: P(same) >= "
                              f"{threshold:.4f}",
            "chosen_on": f"the QQP train half's validation tenth ({len(y)} pairs): "
                         f"calibration (Platt) on its logits, floor = the cosine below which "
                         f"{args.floor_miss:.1%} of its duplicates fall",
            "validation_at_threshold": report[
                f"{'both' if args.symmetric else 'ab'}: floor {floor:.3f} "
                f"({args.floor_miss:.1%} of duplicates below)"]})
        np.savez(args.out, **arrays, meta=np.array(json.dumps(meta)))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--minutes", type=float, help="stop training after this many minutes")
    p.add_argument("--limit", type=int, help="train on the first N training pairs only")
    p.add_argument("--val-limit", type=int, help="score the first N validation pairs only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="train in float32 (bfloat16 autocast: 1.7x faster here)")
    p.add_argument("--choose", type=Path, help="instead of training: choose from these "
                                               "validation logits (--val-out's file)")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/switchyard-embeddings"))
    p.add_argument("--weights", type=Path, help="with --choose: the trained file to write "
                                                "the choice into (as --out)")
    p.add_argument("--symmetric", action="store_true", help="with --choose: both orders")
    p.add_argument("--floor-miss", type=float, default=0.01,
                   help="with --choose: the share of duplicates left below the floor")
    p.add_argument("--wrong-hit-cost", type=float, default=2.0,
                   help="a wrong hit costs this many misses: threshold = cost / (1 + cost)")
    p.add_argument("--out", type=Path, default=CROSS_FILE)
    p.add_argument("--val-out", type=Path, help="the validation slice's logits (.npz)")
    p.add_argument("--checkpoint", type=Path, help="keep the delta here every 500 steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.choose:
        return choose(args)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    rows = list(pairs(args.data, "train"))
    val = [r for r in rows if is_validation(str(r["a"]), str(r["b"]))][: args.val_limit]
    train = [r for r in rows if not is_validation(str(r["a"]), str(r["b"]))][: args.limit]
    print(f"train {len(train)} pairs, validation {len(val)}", file=sys.stderr)
    tok = pair_tokenizer(minilm_path())
    y_train = [float(bool(r["duplicate"])) for r in train]
    y_val = np.array([float(bool(r["duplicate"])) for r in val])

    def encode(rs: list[dict[str, object]], flip: list[bool]) -> list[Any]:
        return tok.encode_batch([(str(r["b"]), str(r["a"])) if f else (str(r["a"]), str(r["b"]))
                                 for r, f in zip(rs, flip, strict=True)])

    val_ab = encode(val, [False] * len(val))
    val_ba = encode(val, [True] * len(val))
    model = build(args.rank, args.alpha, 0.05)
    params = [q for q in model.parameters() if q.requires_grad]
    print(f"trainable parameters: {sum(q.numel() for q in params)}", file=sys.stderr)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(train) / args.batch)
    total = max(1, int(steps_per_epoch * args.epochs))
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    step, seen, epoch = 0, 0, 0
    log: list[dict[str, float]] = []
    deadline = t0 + 60 * args.minutes if args.minutes else math.inf
    done = False
    while not done:
        enc = encode(train, [rng.random() < 0.5 for _ in train])
        running = 0.0
        for ids, mask, types, y, _ in batches(enc, y_train, args.batch, True, rng):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logit = model(ids, mask, types)
            loss = loss_fn(logit.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if args.minutes:  # the schedule ends with the time allowed, whichever is first
                frac = max(step / total, (time.perf_counter() - t0) / (60 * args.minutes))
                for g in opt.param_groups:
                    g["lr"] = args.lr * min(step / warm, max(0.0, 1.0 - frac) / (1 - warm / total))
            else:
                sched.step()
            seen += len(y)
            running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
            if step % 50 == 0:
                el = time.perf_counter() - t0
                print(f"step {step}/{total} epoch {epoch} loss {running:.4f} "
                      f"{seen / el:.1f} pairs/s {el / 60:.1f} min", file=sys.stderr, flush=True)
            if args.checkpoint and step % 500 == 0:
                np.savez(args.checkpoint, **delta(model))
            if step >= total or time.perf_counter() > deadline:
                done = True
                break
        epoch += 1
        t1 = time.perf_counter()
        z_ab, z_ba = score(model, val_ab, bf16=args.bf16), score(model, val_ba, bf16=args.bf16)
        z = (z_ab + z_ba) / 2
        pv = 1 / (1 + np.exp(-z))
        ll = float(-np.mean(y_val * np.log(pv + 1e-9) + (1 - y_val) * np.log(1 - pv + 1e-9)))
        acc = float(np.mean((pv >= 0.5) == (y_val > 0)))
        log.append({"epoch": epoch, "steps": step, "val_logloss": round(ll, 4),
                    "val_accuracy": round(acc, 4)})
        print(f"epoch {epoch}: {log[-1]} (validation in {time.perf_counter() - t1:.0f} s)",
              file=sys.stderr, flush=True)
        if args.val_out:
            np.savez(args.val_out, ab=z_ab, ba=z_ba, y=y_val,
                     a=np.array([str(r["a"]) for r in val]), b=np.array([str(r["b"]) for r in val]))
        if step >= total:
            done = True
    d = delta(model)
    meta = {"fitted_on": f"QQP train half less its validation tenth, by "
                         f"bench/fit_cache_cross.py: {len(train)} pairs, {step} steps of "
                         f"{args.batch}, {time.perf_counter() - t0:.0f} s",
            "rank": args.rank, "alpha": args.alpha, "lr": args.lr, "max_tokens": MAX_TOKENS,
            "targets": list(TARGETS), "validation": log}
    np.savez(args.out, **{k: v.astype(np.float16) if v.ndim == 2 else v for k, v in d.items()},
             meta=np.array(json.dumps(meta)))
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
