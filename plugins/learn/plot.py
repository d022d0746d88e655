"""The quality-cost curve of ``switchyard eval router``/``eval cascade`` as a PNG, beside
the random and perfect references and the two single models (needs matplotlib:
``pip install 'switchyard[eval]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugins import evalplot


def draw(result: dict[str, Any], path: str | Path, title: str, xlabel: str) -> None:
    plt = evalplot.pyplot()
    if plt is None:
        raise SystemExit("switchyard: --plot needs matplotlib: pip install 'switchyard[eval]'")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    refs = result.get("references") or {}
    curves = [("router" if "aiq" in result else "cascade", result["points"], "-", "o")]
    curves += [(name, refs[name]["points"], "--", "") for name in ("perfect", "random") if name in refs]
    for name, pts, style, marker in curves:
        pts = sorted(pts, key=lambda p: p["share"])
        label = name if name not in refs else f"{name} (APGR {refs[name]['apgr']:.2f})"
        if name not in refs and result.get("apgr") is not None:
            label = f"{name} (APGR {result['apgr']:.2f}, CPT50 {result['cpt50']:.0%})"
        ax.plot([100 * p["share"] for p in pts], [100 * p["quality"] for p in pts],
                linestyle=style, marker=marker, markersize=3, label=label)
    for name, single in (result.get("single_models") or {}).items():
        ax.axhline(100 * single["quality"], color="grey", linewidth=0.7, linestyle=":")
        ax.text(1, 100 * single["quality"], f" {name.split('/')[-1]}", fontsize=7, va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("quality (%)")
    ax.legend(fontsize=8, loc="lower right")
    evalplot.save(plt, fig, ax, path, title, dpi=110)
