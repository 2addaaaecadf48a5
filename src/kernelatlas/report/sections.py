"""The report's sections: a small registry, so a stage adds its part of the page in one place.

A section is an HTML function decorated with :func:`register_section`; it may also draw
figures (a generator of :class:`Figure`, run before any HTML is written) and add data for
the page's scripts (:meth:`ReportContext.add_data`). Everything a section shows comes from
``summary.json`` and ``kernels.parquet`` (via the context), so the page can be rebuilt from
an analysis directory alone (:func:`kernelatlas.report.rebuild`)::

    from kernelatlas.report.sections import Figure, register_section

    def _my_figures(ctx):
        fig, ax = ctx.plt.subplots()
        ...
        yield ctx.save(fig, "mine.png", "What it shows")

    @register_section("mine", title="My analysis", order=75, figures=_my_figures)
    def _my_section(ctx):
        return "<p>...</p>" + ctx.figure_html("mine")

Sections are ordered by ``order`` (the built-ins use 10, 20, ... 90), then name. A name is
registered once (a second registration is refused). Modules listed in
:data:`SECTION_MODULES` are imported on first use; one that is not installed is skipped.
"""

from __future__ import annotations

import base64
import fnmatch
import html
import importlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import KernelAtlasError

__all__ = [
    "Figure",
    "Section",
    "ReportContext",
    "register_section",
    "unregister_section",
    "sections",
    "list_sections",
    "SECTION_MODULES",
]

# Modules that register sections (imported once, in this order; a missing one is skipped).
SECTION_MODULES: tuple[str, ...] = (
    "kernelatlas.report.builtin_sections",
    "kernelatlas.biology.report",
)

_REGISTRY: dict[str, Section] = {}
_LOCK = threading.RLock()
_LOAD_LOCK = threading.RLock()
_loaded = False


@dataclass(frozen=True)
class Figure:
    """One PNG under ``figures/``, with its caption (also its alt text)."""

    file: str
    caption: str


@dataclass(frozen=True)
class Section:
    """One part of the page (see the module docstring)."""

    name: str
    title: str
    order: float
    render: Callable[[ReportContext], str]
    figures: Callable[[ReportContext], Iterable[Figure]] | None = None
    applies: Callable[[ReportContext], bool] | None = None
    n_figures: Callable[[ReportContext], int] | None = None
    early: bool = False

    def wanted(self, ctx: ReportContext) -> bool:
        return self.applies is None or bool(self.applies(ctx))


def register_section(
    name: str,
    *,
    title: str,
    order: float,
    figures: Callable[[ReportContext], Iterable[Figure]] | None = None,
    applies: Callable[[ReportContext], bool] | None = None,
    n_figures: Callable[[ReportContext], int] | None = None,
    early: bool = False,
) -> Callable[[Callable[[ReportContext], str]], Callable[[ReportContext], str]]:
    """Decorator: register the HTML function of a section named ``name``.

    ``figures(ctx)`` yields the section's :class:`Figure` (drawn with :meth:`ReportContext.save`);
    ``applies(ctx)`` says whether the run has anything for it (default: always);
    ``n_figures(ctx)`` is how many figures it will draw (for the progress bar; default 1);
    ``early``: its figures and ``applies`` read nothing the baselines add to the summary
    (the models' ``baselines``, ``excess``, ``null_coverage``/``init_coverage``, the
    thresholds' held-out rates, ``nulls``), so an analysis draws them while it measures the
    baselines (default: after).
    """
    if not name.isidentifier():
        raise KernelAtlasError(f"section name {name!r} must be an identifier")

    def deco(fn: Callable[[ReportContext], str]) -> Callable[[ReportContext], str]:
        with _LOCK:
            if name in _REGISTRY:
                raise KernelAtlasError(
                    f"report section {name!r} is already registered "
                    f"({_REGISTRY[name].render.__module__}): choose another name"
                )
            _REGISTRY[name] = Section(
                name, title, float(order), fn, figures, applies, n_figures, bool(early)
            )
        return fn

    return deco


def unregister_section(name: str) -> None:
    """Remove a section (for tests and notebooks)."""
    _load()
    with _LOCK:
        if name not in _REGISTRY:
            raise KernelAtlasError(f"no report section {name!r} is registered")
        del _REGISTRY[name]


def _load() -> None:
    # Its own lock, never held by register_section: a thread importing a section module
    # (it registers under _LOCK) while another one loads them cannot deadlock.
    global _loaded
    if _loaded:
        return
    with _LOAD_LOCK:
        if _loaded:
            return
        try:
            for mod in SECTION_MODULES:
                try:
                    importlib.import_module(mod)
                except ModuleNotFoundError as exc:
                    if exc.name is None or not mod.startswith(exc.name):
                        raise
        finally:
            _loaded = True  # set once every module is in: no thread sees half the registry


def sections() -> tuple[Section, ...]:
    """Every registered section, in page order."""
    _load()
    with _LOCK:
        return tuple(sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name)))


def list_sections(pattern: str = "*") -> list[str]:
    """Names of the registered sections matching a shell-style wildcard, in page order."""
    return [s.name for s in sections() if fnmatch.fnmatchcase(s.name, pattern)]


@dataclass
class ReportContext:
    """What a section sees: the analysis directory, its summary, and what was made so far.

    Attributes
    ----------
    run_dir : the analysis directory (``kernels.parquet``, ``figures/`` inside).
    summary : the summary.json document.
    spectra : autoencoder spectra per size key ``"KxK"`` (``spectrum`` columns, ``decoded``).
    seed : seed of every sample drawn for the page.
    figures : section name -> the figures it drew.
    cache : scratch space sections share (e.g. columns read once from kernels.parquet).
    data : what the page's scripts get (one JSON document in the page).
    """

    run_dir: Path
    summary: dict[str, Any]
    spectra: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    figures: dict[str, list[Figure]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    dpi: int = 110

    @property
    def kernels_path(self) -> Path:
        return self.run_dir / "kernels.parquet"

    @property
    def fig_dir(self) -> Path:
        return self.run_dir / "figures"

    @cached_property
    def labels(self) -> dict[str, str]:
        """source -> display label (:func:`kernelatlas.report.labels.source_labels`)."""
        from .labels import source_labels

        return source_labels([*self.summary.get("models", []), *self.summary.get("layers", [])])

    @cached_property
    def plt(self) -> Any:
        """``matplotlib.pyplot`` on the Agg backend (:func:`.figures.pyplot`)."""
        from .figures import pyplot

        return pyplot()

    def save(self, fig: Any, file: str, caption: str) -> Figure:
        """Write ``fig`` to ``figures/file`` (atomically), close it, return its :class:`Figure`."""
        if not self.fig_dir.is_dir():
            from ..atomic import write_marker

            self.fig_dir.mkdir()
            write_marker(self.fig_dir, "figures")
        path = self.fig_dir / file
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=self.dpi, bbox_inches="tight")
        os.replace(tmp, path)
        self.plt.close(fig)
        return Figure(file, caption)

    def add_data(self, key: str, value: Any) -> None:
        """Give the page's scripts ``value`` under ``key`` (JSON; refused twice)."""
        if key in self.data:
            raise KernelAtlasError(f"page data {key!r} is already set")
        self.data[key] = value

    def img(self, fig: Figure) -> str:
        """The figure as an inline image (a data: URI: the page works when moved or mailed)."""
        raw = (self.fig_dir / fig.file).read_bytes()
        uri = "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
        cap = html.escape(fig.caption)
        return (
            f'<figure><img src="{uri}" alt="{cap}" data-file="figures/{html.escape(fig.file)}">'
            f"<figcaption>{cap} <span class='meta'>(figures/{html.escape(fig.file)})</span>"
            "</figcaption></figure>"
        )

    def figure_html(self, section: str) -> str:
        """Every figure a section drew, inline."""
        return "".join(self.img(f) for f in self.figures.get(section, []))


def run_figures(ctx: ReportContext, wanted: Iterable[Section], stage: Any = None) -> Iterator[str]:
    """Draw each section's figures into ``ctx.figures``; yields section names as they finish."""
    for sec in wanted:
        if sec.figures is None:
            continue
        made = ctx.figures.setdefault(sec.name, [])
        for fig in sec.figures(ctx):
            made.append(fig)
            if stage is not None:
                stage.update(1)
        yield sec.name
