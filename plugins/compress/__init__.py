"""``compress``: the built-in prompt compressor, registered as ``question_aware`` through
``switchyard_register_compressors`` (docs/compression.md): the context of a chat request
(retrieved documents, earlier turns) ranked by relevance to the last user question with
MiniLM (its int8 export: ``plugins.compress.embedder``) and cut to the target, the instructions, the question, code, JSON and tool calls kept
verbatim (``plugins.compress.engine``). The gateway's ``compress`` stage decides where it
pays and accounts it; this only builds the engine."""

from __future__ import annotations

from typing import Any

from gateway import Compressor, RegisterCompressor, hookimpl


def make_compressor(options: dict[str, Any]) -> Compressor:
    """The engine with ``compress.options`` (an unknown option is a start-up error); its
    models load on first use, which the gateway's warm-up is."""
    from plugins.compress.embedder import embedder
    from plugins.compress.engine import Compressor as Engine  # only where compression is on

    rest = dict(options)
    int8 = bool(rest.pop("int8", True))  # MiniLM's int8 export (plugins/compress/embedder.py)
    return Engine(embedder(int8), **rest)


@hookimpl(trylast=True)
def switchyard_register_compressors(register: RegisterCompressor) -> None:
    register("question_aware", make_compressor)
