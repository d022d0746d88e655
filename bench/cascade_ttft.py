"""What a cascade costs a streaming client in time to first token (TTFT): SmolLM2-135M in
process (llama.cpp) as the first stage, the recording OpenAI-compatible upstream (answers at
once, 5 ms a chunk) as the second, the gateway on uvicorn, the official openai SDK as the
client; temperature 0, 32 tokens.

- ``direct``: the model ``local-smol`` itself, streamed live (no cascade);
- ``held, accepted``: a cascade whose judge (``logprob``) accepts the first answer: the
  client's first token waits for the whole first answer (held, judged, then replayed);
- ``held, escalated``: the judge rejects it: the first answer, then the second stage's TTFT;
- ``unjudged first``: ``stream_first_unjudged: true``, the first stage streamed live.

Runs interleaved, one sitting; the figures that matter are the ratios to ``direct``.

    python bench/cascade_ttft.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from provenance import header

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

SURE = "What is 2 + 2?"  # scores about 0.51 (geometric mean token probability)
UNSURE = "Invent a name for a new color and describe it in one word."  # about 0.24
CASES = {"direct": ("local-smol", SURE), "held, accepted": ("ask", SURE),
         "held, escalated": ("ask", UNSURE), "unjudged first": ("ask-live", UNSURE)}


def ttft(client: Any, model: str, prompt: str) -> tuple[float, float, str]:
    """(seconds to the first content chunk, seconds to the end, the answering backend)."""
    t0 = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
        max_tokens=32, stream=True)
    first = None
    for chunk in raw.parse():
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0, raw.headers["x-switchyard-backend"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import openai
    from fakes.openai_upstream import RecordingUpstream
    from support import make_settings, serve

    from gateway.http.app import create_app

    print(header())
    cascade = {"stages": ["local-smol", "big"], "judge": "logprob",
               "judge_options": {"threshold": 0.42}}
    with serve(RecordingUpstream("big-model").app) as up:
        backends = [{"name": "local-smol", "plugin": "llamacpp", "n_ctx": 1024},
                    {"name": "big", "plugin": "openai_compatible", "base_url": up.url + "/v1",
                     "model": "big-model"}]
        routes = [{"name": "ask", "cascade": cascade},
                  {"name": "ask-live", "cascade": {**cascade, "stream_first_unjudged": True}}]
        settings = make_settings(Path(tempfile.mkdtemp()), backends=backends, routes=routes)
        with serve(create_app(settings)) as gw:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0,
                                   timeout=300)
            for model, prompt in CASES.values():  # warm up: both llama instances loaded
                ttft(client, model, prompt)
            seen: dict[str, list[tuple[float, float, str]]] = {k: [] for k in CASES}
            for _ in range(args.runs):
                for name, (model, prompt) in CASES.items():
                    seen[name].append(ttft(client, model, prompt))
    base = statistics.median(t for t, _, _ in seen["direct"])
    print(f"{'case':<18}{'answered by':<13}{'TTFT p50 s':>11}{'x direct':>10}{'total p50 s':>13}")
    for name, rows in seen.items():
        first = statistics.median(t for t, _, _ in rows)
        total = statistics.median(t for _, t, _ in rows)
        backends = "/".join(sorted({b for _, _, b in rows}))
        print(f"{name:<18}{backends:<13}{first:>11.3f}{first / base:>10.1f}{total:>13.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
