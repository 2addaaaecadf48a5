"""Statistics of ``bench-train``: steps and time to target, paired bootstrap CIs, the verdict.

Definitions (one place; the docs quote them from :data:`RULE`):

- A *setting* is one (dataset, training-set size, architecture). Its **target** is the
  ``default`` scheme's final test accuracy, averaged over seeds.
- A run's **steps to target** is the first evaluated step after step 0 whose test accuracy
  is at or above the target (``None`` if it never is); **seconds to target** the training time (no
  evaluations) up to that evaluation. For averages, a run that never reaches the target
  counts as ``total_steps + eval_every`` steps (its training time scaled the same way): a
  bound that flatters a scheme that misses, which is why "faster" also requires every seed
  of the scheme to reach the target.
- **Speed-up** of a scheme = mean steps to target of ``default`` / mean steps of the scheme
  (the same with seconds: *time speed-up*). Seed ``s`` of every scheme shares the default
  weights outside the depthwise layers and the batch order, so the confidence interval is a
  *paired* bootstrap over seeds: resample seeds with replacement, recompute the target from
  the resampled default runs, both schemes' steps to that target and the ratio;
  ``N_BOOT`` resamples, percentile interval at ``CI_LEVEL``. Training time is wall-clock on
  an accelerator and the process's CPU time on a CPU (:func:`time_basis`).
- **Lever effect**: the same speed-up against the scheme's registered *control* (the scheme
  it adds its lever to: ``dog`` for ``structured``, ``default_ls`` for ``dog_ls``...), the
  target then being the control's mean final accuracy. Reported beside the verdict; the
  verdict itself is against ``default``.
- **Verdict** per scheme and setting: ``faster`` when the speed-up is >= ``MIN_SPEEDUP``,
  its CI excludes 1 (lower bound > 1) and every seed reached the target; ``slower`` when the
  CI's upper bound is < 1; ``too few seeds`` below ``MIN_SEEDS`` paired seeds; otherwise
  ``no difference shown``. The same rule on seconds gives the time verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "RULE",
    "MIN_SPEEDUP",
    "CI_LEVEL",
    "N_BOOT",
    "MIN_SEEDS",
    "REFERENCE_SCHEME",
    "setting_of",
    "steps_to_target",
    "annotate_runs",
    "paired_bootstrap",
    "summarize",
    "time_basis",
    "verdict",
]

MIN_SPEEDUP = 1.5
CI_LEVEL = 0.95
N_BOOT = 2000
MIN_SEEDS = 5
REFERENCE_SCHEME = "default"
RULE = (
    f"faster = speed-up (mean steps to the default's mean final accuracy, default / scheme) "
    f">= {MIN_SPEEDUP}x, with the {CI_LEVEL:.0%} paired-bootstrap CI over seeds above 1 "
    f"({N_BOOT} resamples, target recomputed per resample) and every seed of the scheme "
    f"reaching the target; slower = CI entirely below 1; fewer than {MIN_SEEDS} paired seeds: "
    "too few seeds; else no difference shown. Time verdict: the same rule on training time "
    "(wall-clock on a GPU, the process's CPU time on a CPU)."
)

Setting = tuple[str, Any, str]  # (dataset, n_train, arch)


def setting_of(run: dict[str, Any]) -> Setting:
    """The (dataset, n_train, arch) key of a run."""
    return (run["dataset"], run["n_train"], run["arch"])


def steps_to_target(curve: Sequence[dict[str, Any]], target: float) -> tuple[Any, Any, Any]:
    """(step, seconds, cpu_seconds) of the first evaluation at or above ``target``, or Nones."""
    for p in curve:
        if p["step"] > 0 and p["accuracy"] >= target - 1e-12:
            return int(p["step"]), float(p["seconds"]), float(p["cpu_seconds"])
    return None, None, None


def _targets(runs: Iterable[dict[str, Any]]) -> dict[Setting, float]:
    acc: dict[Setting, list[float]] = {}
    for r in runs:
        if r["scheme"] == REFERENCE_SCHEME:
            acc.setdefault(setting_of(r), []).append(float(r["final_accuracy"]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def annotate_runs(runs: list[dict[str, Any]]) -> dict[Setting, float]:
    """Set every run's ``target``, ``steps_to_target``, ``seconds_to_target`` and
    ``cpu_seconds_to_target`` from its setting's target (``None`` where there is no default
    run yet); returns the targets."""
    targets = _targets(runs)
    for r in runs:
        t = targets.get(setting_of(r))
        step, sec, cpu = (None, None, None) if t is None else steps_to_target(r["curve"], t)
        r["target"] = t
        r["steps_to_target"] = step
        r["seconds_to_target"] = sec
        r["cpu_seconds_to_target"] = cpu
    return targets


# --------------------------------------------------------------------------- bootstrap


def _arrays(runs: Sequence[dict[str, Any]], time_key: str) -> dict[str, np.ndarray]:
    """Curves of one scheme's runs (one eval grid) as arrays [S, E]."""
    steps = np.array([p["step"] for p in runs[0]["curve"]], dtype=float)
    acc = np.array([[p["accuracy"] for p in r["curve"]] for r in runs], dtype=float)
    sec = np.array([[p[time_key] for p in r["curve"]] for r in runs], dtype=float)
    total = float(runs[0]["total_steps"])
    every = float(runs[0]["eval_every"])
    return {
        "steps": steps,
        "acc": acc,
        "sec": sec,
        "censor_steps": np.float64(total + every),
        "censor_sec": sec[:, -1] * (total + every) / total,
    }


def _first(acc: np.ndarray, target: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index along the last axis with ``acc >= target`` and whether there is one."""
    hit = (acc >= target[..., None] - 1e-12) & (steps > 0)  # step 0 (before training) never counts
    return hit.argmax(-1), hit.any(-1)


def _to_target(a: dict[str, np.ndarray], idx: np.ndarray, target: np.ndarray):
    """Mean steps and seconds to ``target`` [B] of the runs ``idx`` [B, S] (censored)."""
    first, ok = _first(a["acc"][idx], target[:, None], a["steps"])
    steps = np.where(ok, a["steps"][first], a["censor_steps"])
    sec = np.where(
        ok, np.take_along_axis(a["sec"][idx], first[..., None], -1)[..., 0], a["censor_sec"][idx]
    )
    return steps.mean(-1), sec.mean(-1), ok


def paired_bootstrap(
    base: Sequence[dict[str, Any]],
    other: Sequence[dict[str, Any]],
    *,
    n_boot: int = N_BOOT,
    level: float = CI_LEVEL,
    seed: int = 0,
    time_key: str = "seconds",
) -> dict[str, Any]:
    """Speed-up of ``other`` over ``base`` (runs paired by ``seed``), point and CIs.

    ``time_key``: the curve field the time speed-up uses (``seconds`` wall-clock or
    ``cpu_seconds``).

    Returns ``seeds`` (paired), ``speedup``, ``speedup_ci``, ``time_speedup``,
    ``time_speedup_ci``, ``final_delta`` (mean final accuracy, other - base) and
    ``final_delta_ci``; CIs are ``None`` with fewer than 2 paired seeds.
    """
    by_seed = {r["seed"]: r for r in base}
    pairs = [(by_seed[r["seed"]], r) for r in other if r["seed"] in by_seed]
    pairs.sort(key=lambda p: p[0]["seed"])
    b = _arrays([p[0] for p in pairs], time_key)
    o = _arrays([p[1] for p in pairs], time_key)
    s = len(pairs)
    fin_b, fin_o = b["acc"][:, -1], o["acc"][:, -1]

    def stats(idx: np.ndarray) -> tuple[np.ndarray, ...]:
        target = fin_b[idx].mean(-1)
        sb, tb, _ = _to_target(b, idx, target)
        so, to, _ = _to_target(o, idx, target)
        return sb / so, tb / to, fin_o[idx].mean(-1) - fin_b[idx].mean(-1)

    point = stats(np.arange(s)[None, :])
    out: dict[str, Any] = {
        "seeds": s,
        "speedup": float(point[0][0]),
        "time_speedup": float(point[1][0]),
        "final_delta": float(point[2][0]),
        "speedup_ci": None,
        "time_speedup_ci": None,
        "final_delta_ci": None,
    }
    if s >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, s, size=(int(n_boot), s))
        boot = stats(idx)
        q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        for key, v in zip(("speedup_ci", "time_speedup_ci", "final_delta_ci"), boot, strict=True):
            out[key] = [float(x) for x in np.percentile(v, q)]
    return out


# --------------------------------------------------------------------------- summary


def _label(ratio: float, ci: list[float] | None, all_reached: bool, seeds: int) -> str:
    if seeds < MIN_SEEDS or ci is None:
        return "too few seeds"
    if ratio >= MIN_SPEEDUP and ci[0] > 1.0 and all_reached:
        return "faster"
    if ci[1] < 1.0:
        return "slower"
    return "no difference shown"


def _coverage_stats(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if "coverage" not in runs[0]["curve"][0]:
        return {"coverage_step0": None, "coverage_final": None, "coverage_mean": None}
    cov = np.array([[p["coverage"] for p in r["curve"]] for r in runs], dtype=float)
    return {
        "coverage_step0": float(cov[:, 0].mean()),
        "coverage_final": float(cov[:, -1].mean()),
        "coverage_mean": float(cov.mean()),  # area under the coverage curve / training length
        "coverage_curve": [float(v) for v in cov.mean(0)],
    }


def time_basis(device: str) -> str:
    """The curve field of the time speed-up: wall-clock ``seconds`` on an accelerator,
    ``cpu_seconds`` (this process's CPU time) on a CPU, where wall-clock on a shared
    machine measures the neighbours' load as much as the training."""
    return "cpu_seconds" if str(device).startswith("cpu") else "seconds"


def _control_of(scheme: str) -> str:
    """The registered control of ``scheme`` (``default`` for unknown names)."""
    from .schemes import _REGISTRY, _load_builtins

    _load_builtins()
    info = _REGISTRY.get(scheme)
    return info.control if info is not None else REFERENCE_SCHEME


def summarize(
    runs: list[dict[str, Any]],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    time_key: str = "seconds",
) -> list[dict[str, Any]]:
    """One row per (dataset, n_train, arch, scheme), settings in run order, schemes too.

    Annotates the runs first (:func:`annotate_runs`). Settings without a default run are
    left out (nothing to compare with). ``time_key``: see :func:`time_basis`.
    """
    targets = annotate_runs(runs)
    groups: dict[Setting, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        groups.setdefault(setting_of(r), {}).setdefault(r["scheme"], []).append(r)
    rows = []
    for key, schemes in groups.items():
        if key not in targets:
            continue
        base = schemes[REFERENCE_SCHEME]
        for scheme, rs in schemes.items():
            rs = sorted(rs, key=lambda r: r["seed"])
            st = [r["steps_to_target"] for r in rs]
            fin = np.array([r["final_accuracy"] for r in rs], dtype=float)
            boot = paired_bootstrap(base, rs, n_boot=n_boot, seed=seed, time_key=time_key)
            reached = sum(v is not None for v in st)
            row = {
                "dataset": key[0],
                "n_train": key[1],
                "regime": rs[0].get("regime", str(key[1])),
                "arch": key[2],
                "scheme": scheme,
                "lever": rs[0].get("lever"),
                "seeds": len(rs),
                "target": targets[key],
                "total_steps": int(rs[0]["total_steps"]),
                "eval_every": int(rs[0]["eval_every"]),
                "steps_to_target": st,
                "reached": reached,
                "steps_to_target_mean": float(
                    np.mean(
                        [
                            v if v is not None else rs[0]["total_steps"] + rs[0]["eval_every"]
                            for v in st
                        ]
                    )
                ),
                **boot,
                "time_basis": time_key,
                "final_accuracy_mean": float(fin.mean()),
                "final_accuracy_std": float(fin.std(ddof=1)) if len(fin) > 1 else 0.0,
                "final_accuracy_min": float(fin.min()),
                "final_accuracy_max": float(fin.max()),
                "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                "cpu_seconds_mean": float(np.mean([r["cpu_seconds"] for r in rs])),
                "trainable_params": int(rs[0]["trainable_params"]),
                **_coverage_stats(rs),
            }
            control = _control_of(scheme)
            row["control"] = control if control in schemes and control != scheme else None
            if row["control"] is None:
                row.update(vs_control_speedup=None, vs_control_ci=None, vs_control_delta=None)
            else:
                vs = (
                    boot
                    if control == REFERENCE_SCHEME
                    else paired_bootstrap(
                        schemes[control], rs, n_boot=n_boot, seed=seed, time_key=time_key
                    )
                )
                row.update(
                    vs_control_speedup=vs["speedup"],
                    vs_control_ci=vs["speedup_ci"],
                    vs_control_delta=vs["final_delta"],
                )
            all_reached = reached == len(rs)
            if scheme == REFERENCE_SCHEME:
                row["verdict"] = row["time_verdict"] = "reference"
            else:
                row["verdict"] = _label(
                    boot["speedup"], boot["speedup_ci"], all_reached, boot["seeds"]
                )
                row["time_verdict"] = _label(
                    boot["time_speedup"], boot["time_speedup_ci"], all_reached, boot["seeds"]
                )
            rows.append(row)
    return rows


def _where(r: dict[str, Any]) -> str:
    return f"{r['dataset']}/{r.get('regime', r['n_train'])}/{r['arch']}/{r['scheme']}"


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def verdict(summary: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's verdict, computed from the summary rows by :data:`RULE`.

    Returns ``rule``, ``faster`` / ``faster_time`` / ``slower`` (lists of
    ``dataset/n_train/arch/scheme``), ``closest`` (the non-default row with the highest CI
    lower bound of its speed-up, and its figures), ``coverage_link`` (per setting: the
    Spearman correlation over schemes between speed-up and mean coverage),
    ``coverage_link_pooled`` (the same over every row of every setting), ``lever_effects``
    (speed-up of each scheme over its own control, where that is not ``default``) and
    ``lines`` (plain sentences).
    """
    rows = list(summary)
    others = [r for r in rows if r["scheme"] != REFERENCE_SCHEME]
    faster = [_where(r) for r in others if r["verdict"] == "faster"]
    faster_t = [_where(r) for r in others if r["time_verdict"] == "faster"]
    slower = [_where(r) for r in others if r["verdict"] == "slower"]
    ranked = [r for r in others if r["speedup_ci"] is not None]
    closest = None
    if ranked:
        best = max(ranked, key=lambda r: (r["speedup_ci"][0], r["speedup"]))
        closest = {
            "where": _where(best),
            "scheme": best["scheme"],
            "lever": best.get("lever"),
            "speedup": best["speedup"],
            "speedup_ci": best["speedup_ci"],
            "reached": best["reached"],
            "seeds": best["seeds"],
        }
    link = []
    settings: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        settings.setdefault((r["dataset"], r["n_train"], r["arch"]), []).append(r)
    for (d, n, a), rs in settings.items():
        rs = [r for r in rs if r.get("coverage_mean") is not None]
        rho = _spearman(
            np.array([r["speedup"] for r in rs]), np.array([r["coverage_mean"] for r in rs])
        )
        link.append(
            {
                "dataset": d,
                "n_train": n,
                "regime": rs[0].get("regime") if rs else None,
                "arch": a,
                "spearman": rho,
                "schemes": len(rs),
            }
        )
    effects = [
        {
            "where": _where(r),
            "control": r["control"],
            "speedup": r["vs_control_speedup"],
            "ci": r["vs_control_ci"],
            "seeds": r["seeds"],
        }
        for r in others
        if r.get("control") not in (None, REFERENCE_SCHEME) and r.get("vs_control_ci")
    ]
    with_cov = [r for r in rows if r.get("coverage_mean") is not None]
    pooled = _spearman(
        np.array([r["speedup"] for r in with_cov]), np.array([r["coverage_mean"] for r in with_cov])
    )
    lines = []
    for r in others:
        ci = r["speedup_ci"]
        ci_s = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "[-]"
        lines.append(
            f"{_where(r)}: {r['speedup']:.2f}x {ci_s} steps, {r['time_speedup']:.2f}x time, "
            f"{r['reached']}/{r['seeds']} reached {r['target']:.4f}; final "
            f"{r['final_accuracy_mean']:.4f} +- {r['final_accuracy_std']:.4f} -> {r['verdict']}"
        )
    lines.append(
        f"{len(faster)} scheme/setting pair(s) faster by the rule"
        + (": " + ", ".join(faster) if faster else ".")
    )
    if closest is not None:
        c = closest
        lines.append(
            f"closest: {c['where']} {c['speedup']:.2f}x, CI [{c['speedup_ci'][0]:.2f}, "
            f"{c['speedup_ci'][1]:.2f}], {c['reached']}/{c['seeds']} seeds reached the target"
        )
    return {
        "rule": RULE,
        "faster": faster,
        "faster_time": faster_t,
        "slower": slower,
        "closest": closest,
        "coverage_link": link,
        "coverage_link_pooled": pooled,
        "lever_effects": effects,
        "lines": lines,
    }
