"""Tables and figures of a ``bench-train`` document (Markdown, matplotlib PNGs).

Everything here reads the document's ``summary``/``verdict`` (computed by :mod:`.stats`)
and its per-seed ``runs``; nothing is typed in. :func:`write_report` writes
``<name>.md``, ``<name>.png`` (test accuracy against step, mean and min-max over seeds, the
target dashed) and ``<name>-coverage.png`` (atlas coverage of the depthwise kernels
against step, mean over seeds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KernelAtlasError

__all__ = ["summary_markdown", "plot_curves", "write_report"]


def _ci(ci: list[float] | None, fmt: str = "{:.2f}") -> str:
    return "[-]" if ci is None else "[" + ", ".join(fmt.format(v) for v in ci) + "]"


def _settings(summary: list[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in summary:
        out.setdefault((r["dataset"], r["regime"], r["n_train"], r["arch"]), []).append(r)
    return list(out.items())


def _vs(r: dict[str, Any]) -> str:
    if r.get("vs_control_speedup") is None:
        return "-"
    return f"{r['vs_control_speedup']:.2f}x {_ci(r['vs_control_ci'])} vs {r['control']}"


def summary_markdown(
    doc: dict[str, Any], *, heading_level: int = 2, name: str = "bench-train"
) -> str:
    """Per setting a table of every scheme; then the verdict and the coverage link
    (``name``: the command, ``bench-train`` or ``bench-init``, for the heading)."""
    h = "#" * heading_level
    cfg = doc["config"]
    env = doc["environment"]
    lines = [
        f"{h} {name} `{cfg['name']}`: {env['device']} ({env['device_name']}), "
        f"kernelatlas {doc['kernelatlas_version']}",
        "",
        f"Command: `{doc.get('command') or '(API)'}`. {cfg['steps']} steps of batch "
        f"{cfg['batch_size']} (AdamW lr {cfg['lr']:g}), evaluation every {cfg['eval_every']} "
        f"steps on {cfg['n_test'] or 'all'} test images; {cfg['seeds']} seed{'s' * (cfg['seeds'] != 1)} per scheme.",
        "",
        f"Rule: {doc['rule']}",
        "",
    ]
    for (dname, regime, n, arch), rows in _settings(doc["summary"]):
        base = next(r for r in rows if r["scheme"] == "default")
        lines += [
            f"{h}# {dname} / {regime} ({n} images) / {arch}",
            "",
            f"Target {base['target']:.4f} (the default's mean final accuracy); "
            f"{base['total_steps']} steps, evaluations every {base['eval_every']}.",
            "",
            "| scheme | lever | steps to target (per seed) | reached | speed-up [95% CI] "
            f"| time speed-up [95% CI] ({'CPU' if base.get('time_basis') == 'cpu_seconds' else 'wall'}) "
            "| final acc mean ± std [min, max] | Δ final [95% CI] "
            "| vs its control [95% CI] | coverage step 0 → end | trainable | verdict (steps / time) |",
            "|" + "---|" * 12,
        ]
        for r in rows:
            st = ", ".join("-" if v is None else str(v) for v in r["steps_to_target"])
            cov = (
                "-"
                if r.get("coverage_step0") is None
                else f"{r['coverage_step0']:.2f} → {r['coverage_final']:.2f}"
            )
            delta = f"{r['final_delta'] * 100:+.1f} pt {_ci(r['final_delta_ci'] and [v * 100 for v in r['final_delta_ci']], '{:+.1f}')}"
            lines.append(
                f"| {r['scheme']} | {r['lever']} | {st} | {r['reached']}/{r['seeds']} "
                f"| {r['speedup']:.2f}x {_ci(r['speedup_ci'])} "
                f"| {r['time_speedup']:.2f}x {_ci(r['time_speedup_ci'])} "
                f"| {r['final_accuracy_mean']:.4f} ± {r['final_accuracy_std']:.4f} "
                f"[{r['final_accuracy_min']:.4f}, {r['final_accuracy_max']:.4f}] "
                f"| {delta} | {_vs(r)} | {cov} | {r['trainable_params']:,} "
                f"| {r['verdict']} / {r['time_verdict']} |"
            )
        lines.append("")
    v = doc["verdict"]
    lines += [f"{h}# Verdict (computed by the rule above)", ""]
    lines += [f"- {line}" for line in v["lines"][-2:]]
    lines += [
        f"- faster in training time: {', '.join(v['faster_time']) or 'none'}",
        f"- slower: {', '.join(v['slower']) or 'none'}",
        "",
        f"{h}# Each lever against its own control",
        "",
        "Speed-up to the control's mean final accuracy (the control differs by that lever "
        "only); a CI above 1 means the lever itself helps, below 1 that it hurts.",
        "",
        "| setting / scheme | control | speed-up [95% CI] | seeds |",
        "|---|---|---|---|",
        *[
            f"| {e['where']} | {e['control']} | {e['speedup']:.2f}x {_ci(e['ci'])} | {e['seeds']} |"
            for e in v.get("lever_effects", [])
        ],
        "",
        f"{h}# Coverage and speed",
        "",
        "Spearman rank correlation, over the schemes of each setting, between speed-up and "
        "mean atlas coverage over training (positive: the schemes whose kernels sit in the "
        "atlas earlier are the faster ones).",
        "",
        "| dataset | regime | arch | schemes | Spearman |",
        "|---|---|---|---|---|",
    ]
    for c in v["coverage_link"]:
        rho = "-" if c["spearman"] is None else f"{c['spearman']:+.2f}"
        lines.append(f"| {c['dataset']} | {c['regime']} | {c['arch']} | {c['schemes']} | {rho} |")
    pooled = v.get("coverage_link_pooled")
    lines += [
        "",
        "Over every scheme of every setting: "
        + ("-" if pooled is None else f"{pooled:+.2f}")
        + ".",
    ]
    if doc.get("skipped"):
        skipped = sorted({(s["arch"], s["scheme"], s["reason"]) for s in doc["skipped"]})
        lines += ["", "Not run: " + "; ".join(f"{s} on {a} ({why})" for a, s, why in skipped) + "."]
    return "\n".join(lines) + "\n"


def plot_curves(
    doc: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    value: str = "accuracy",
    name: str = "bench-train",
) -> Path:
    """One panel per setting: ``value`` (``accuracy`` or ``coverage``) against step per
    scheme, mean over seeds (accuracy: with the min-max band and the target dashed);
    ``name`` (``bench-train`` or ``bench-init``) titles it."""
    from ..report.figures import pyplot

    plt = pyplot()
    runs = doc["runs"]
    if not runs:
        raise KernelAtlasError("no runs to plot")
    if value == "coverage" and "coverage" not in runs[0]["curve"][0]:
        raise KernelAtlasError("the runs carry no coverage (the benchmark ran without it)")
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        key = (r["dataset"], r.get("regime", r["n_train"]), r["arch"])
        groups.setdefault(key, {}).setdefault(r["scheme"], []).append(r)
    targets = {(r["dataset"], r["regime"], r["arch"]): r["target"] for r in doc.get("summary", [])}
    schemes = list(dict.fromkeys(r["scheme"] for r in runs))
    cmap = plt.get_cmap("tab20" if len(schemes) > 10 else "tab10")
    colors = {s: cmap(i % cmap.N) for i, s in enumerate(schemes)}
    n = len(groups)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (key, by_scheme) in zip(axes.ravel(), groups.items(), strict=False):
        lows = []
        for scheme, rs in by_scheme.items():
            steps = np.array([p["step"] for p in rs[0]["curve"]], dtype=float)
            vals = np.array([[p[value] for p in r["curve"]] for r in rs], dtype=float)
            ls = "-" if scheme == "default" else ("--" if scheme.endswith("_ls") else "-")
            lw = 2.0 if scheme == "default" else 1.2
            ax.plot(steps, vals.mean(0), color=colors[scheme], lw=lw, ls=ls, label=scheme)
            if value == "accuracy":
                ax.fill_between(
                    steps, vals.min(0), vals.max(0), color=colors[scheme], alpha=0.1, lw=0
                )
                lows.append(vals[:, len(steps) // 3 :].min())
        if value == "accuracy":
            if key in targets and targets[key] is not None:
                ax.axhline(targets[key], color="black", ls=":", lw=0.9)
            hi = max(
                v.max()
                for v in [
                    np.array([[p["accuracy"] for p in r["curve"]] for r in rs])
                    for rs in by_scheme.values()
                ]
            )
            ax.set_ylim(max(0.0, min(lows) - 0.02), min(1.0, hi + 0.01))
        else:
            ax.set_ylim(0, 1.02)
        ax.set_title(" / ".join(str(k) for k in key), fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel("test accuracy" if value == "accuracy" else "atlas coverage", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes.ravel()[1:n]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    fig.legend(
        list(seen.values()),
        list(seen),
        loc="lower center",
        ncol=min(len(seen), 7),
        fontsize=8,
        frameon=False,
    )
    env = doc["environment"]
    fig.suptitle(
        f"{name} {doc['config']['name']}: {value} ({doc['config']['seeds']} seeds, "
        f"{env['device']} {env['device_name']}) - kernelatlas {doc['kernelatlas_version']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = Path(path)
    from ..atomic import temp_sibling

    tmp = temp_sibling(path, keep_suffix=True)  # never a fixed name (a planted symlink)
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(doc: dict[str, Any], out: str | os.PathLike[str], name: str) -> list[Path]:
    """``out/<name>.md``, ``out/<name>.png`` and (with coverage) ``out/<name>-coverage.png``."""
    out = Path(out)
    md = out / f"{name}.md"
    from ..atomic import temp_sibling

    tmp = temp_sibling(md)
    tmp.write_text(summary_markdown(doc, name=name))
    os.replace(tmp, md)
    paths = [md, plot_curves(doc, out / f"{name}.png", name=name)]
    if "coverage" in doc["runs"][0]["curve"][0]:
        paths.append(plot_curves(doc, out / f"{name}-coverage.png", value="coverage", name=name))
    return paths
