"""GPTCache's own semantic cache benchmark, run on Switchyard.

The data is GPTCache's ``examples/benchmark/mock_data.json`` (zilliztech/GPTCache, MIT): 999
``{"origin", "similar"}`` pairs, a sentence and a paraphrase of it. It is not in this repo
and this script fetches nothing: download it yourself and pass its path. GPTCache stores
every origin as its own entry, then looks up every paraphrase; at its default threshold
(0.9) it reports 804 right hits, 77 wrong hits (an answer stored for another sentence) and
118 misses.

Two ways, same counts:

- ``--direct``: the production ``SemanticIndex`` in this process, one group;
- default: end to end through the HTTP API of a real ``switchyard serve`` (started here,
  with ``cache: {enabled: true}`` and an upstream that answers with the prompt it got, so
  the answer tells which entry served a hit). The origins are sent with
  ``Cache-Control: no-cache`` (stored fresh), then the paraphrases plainly; the
  ``x-switchyard-cache`` header says hit or miss, and a hit is right when its answer is
  its own origin's.

    python bench/cache_gptcache.py --data ~/GPTCache/examples/benchmark/mock_data.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import free_port
from soak import wait_port

MODEL = "echo-model"


def load(path: Path) -> list[tuple[str, str]]:
    rows = json.loads(path.read_text())
    return [(str(r["origin"]), str(r["similar"])) for r in rows]


def count(pairs: list[tuple[str, str]], answered: list[str | None]) -> dict[str, int]:
    """``answered[i]``: the text whose entry served paraphrase i, None for a miss. Over
    HTTP a paraphrase that missed is stored too (it was sent plainly), and a later one may
    hit it: its answer is then that paraphrase's, which stands for its own origin. The set
    repeats some paraphrases word for word under different origins (`The main version of
    the documentation can be accessed by clicking on the link.` under three): such an
    entry stands for each of them."""
    right = sum(1 for v in verdicts(pairs, answered) if v == "right")
    misses = sum(1 for a in answered if a is None)
    return {"pairs": len(pairs), "right_hits": right,
            "wrong_hits": len(pairs) - right - misses, "misses": misses}


def verdicts(pairs: list[tuple[str, str]], answered: list[str | None]) -> list[str]:
    """Per paraphrase: "right", "wrong" or "miss", as ``count`` counts them."""
    origins: dict[str, set[str]] = {}
    for o, s in pairs:
        origins.setdefault(o, set()).add(o)
        origins.setdefault(s, set()).add(o)
    return ["miss" if a is None else "right" if o in origins.get(a, ()) else "wrong"
            for (o, _), a in zip(pairs, answered, strict=True)]


def write_pairs(path: Path | None, pairs: list[tuple[str, str]], answered: list[str | None],
                extra: list[dict[str, Any]]) -> None:
    """One JSON line per paraphrase: its origin, the text whose entry answered, the verdict
    and what the decision saw (for reading the wrong hits and the misses)."""
    if path is None:
        return
    with path.open("w") as f:
        for (o, s), a, v, e in zip(pairs, answered, verdicts(pairs, answered), extra,
                                   strict=True):
            f.write(json.dumps({"verdict": v, "origin": o, "similar": s, "answered": a, **e})
                    + "\n")


async def direct(pairs: list[tuple[str, str]], threshold: float | None,
                 plain_cosine: float | None = None, pairs_out: Path | None = None,
                 cache_dir: Path | None = None, options: dict[str, float] | None = None,
                 ) -> dict[str, Any]:
    from plugins.cache.evaluate import vectors
    from plugins.cache.semantic import SemanticIndex
    from plugins.minilm import MiniLM

    model = MiniLM.shared()
    vecs = vectors(sorted({t for p in pairs for t in p}), cache_dir)
    index = SemanticIndex(model, **(options or {}))  # type: ignore[arg-type]
    for i, (origin, _) in enumerate(pairs):
        index.add("bench", str(i), origin, vecs[origin])
    answered: list[str | None] = []
    extra: list[dict[str, Any]] = []
    for _, similar in pairs:
        m = await index.lookup("bench", similar, vecs[similar], threshold)
        hit = m is not None and (m.hit if plain_cosine is None else m.similarity >= plain_cosine)
        answered.append(pairs[int(m.entry_id)][0] if m is not None and hit else None)
        extra.append({} if m is None else {
            "nearest": pairs[int(m.entry_id)][0], "similarity": round(m.similarity, 4),
            "score": round(m.score, 4)})
    write_pairs(pairs_out, pairs, answered, extra)
    if plain_cosine is not None:
        return {"way": f"plain cosine >= {plain_cosine} (the same index's nearest entry)",
                **count(pairs, answered)}
    return {"way": "direct (SemanticIndex)", "threshold": threshold or index.threshold,
            "select_margin": index.select_margin, "ambiguity_margin": index.ambiguity_margin,
            **count(pairs, answered)}


def _echo_upstream(port: int) -> Any:
    """An OpenAI-compatible upstream whose answer is the last user message."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        text = body["messages"][-1]["content"]
        return JSONResponse({
            "id": "chatcmpl-echo", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})

    server = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
        host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    return server


def http(pairs: list[tuple[str, str]], threshold: float | None,
         pairs_out: Path | None = None) -> dict[str, Any]:
    import httpx

    up, gw = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp())
    cfg = tmp / "gptcache-bench.yaml"
    cfg.write_text(f"""
backends:
  - {{name: echo, plugin: openai_compatible, base_url: "http://127.0.0.1:{up}/v1",
     model: {MODEL}}}
routes:
  - {{name: auto, backends: [echo]}}
default_route: auto
cache: {{enabled: true, max_entries: 100000}}
ledger: {{kind: none}}
log_level: warning
""")
    server = _echo_upstream(up)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg),
                             "--port", str(gw)], env=env)
    headers = {"x-switchyard-cache-threshold": str(threshold)} if threshold is not None else {}
    try:
        wait_port(up)
        wait_port(gw, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{gw}/v1", timeout=60) as c:
            def ask(text: str, extra: dict[str, str]) -> httpx.Response:
                r = c.post("/chat/completions", headers={**headers, **extra}, json={
                    "model": "auto", "temperature": 0,
                    "messages": [{"role": "user", "content": text}]})
                r.raise_for_status()
                return r

            for origin, _ in pairs:
                ask(origin, {"cache-control": "no-cache"})
            answered: list[str | None] = []
            extra: list[dict[str, Any]] = []
            tiers: dict[str, int] = {}
            for _, similar in pairs:
                r = ask(similar, {})
                tier = r.headers.get("x-switchyard-cache", "")
                tiers[tier] = tiers.get(tier, 0) + 1
                content = r.json()["choices"][0]["message"]["content"]
                answered.append(content if tier.startswith("hit") else None)
                extra.append({"tier": tier, "similarity":
                              r.headers.get("x-switchyard-cache-similarity")})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.should_exit = True
    write_pairs(pairs_out, pairs, answered, extra)
    return {"way": "HTTP API (switchyard serve, cache: {enabled: true})",
            "threshold": threshold, "x-switchyard-cache": tiers, **count(pairs, answered)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="GPTCache's mock_data.json")
    p.add_argument("--direct", action="store_true", help="SemanticIndex in process, no HTTP")
    p.add_argument("--threshold", type=float, help="default: the shipped one")
    p.add_argument("--limit", type=int, help="the first N pairs only")
    p.add_argument("--plain-cosine", type=float, metavar="T",
                   help="with --direct: hit when the nearest entry's cosine >= T (baseline)")
    p.add_argument("--select-margin", type=float,
                   help="with --direct: SemanticIndex(select_margin=...) (default: the shipped one)")
    p.add_argument("--ambiguity", type=float,
                   help="with --direct: SemanticIndex(ambiguity_margin=...) (default: off)")
    p.add_argument("--cache-dir", type=Path,
                   help="with --direct: keep the MiniLM vectors here and reuse them")
    p.add_argument("--pairs-out", type=Path,
                   help="write one JSON line per paraphrase here: its verdict (right, wrong, "
                        "miss), origin, the text that answered, similarity (and score)")
    args = p.parse_args()
    pairs = load(args.data)[: args.limit]
    t0 = time.perf_counter()
    if args.direct:
        options = {k: v for k, v in (("select_margin", args.select_margin),
                                     ("ambiguity_margin", args.ambiguity)) if v is not None}
        out = asyncio.run(direct(pairs, args.threshold, args.plain_cosine, args.pairs_out,
                                 args.cache_dir, options))
    else:
        out = http(pairs, args.threshold, args.pairs_out)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["gptcache_reported_at_0.9"] = {"right_hits": 804, "wrong_hits": 77, "misses": 118}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
