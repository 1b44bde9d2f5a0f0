"""The report page: plain data from ``rayclust.report.analysis`` rendered by Jinja2 templates
(``templates/``, autoescaped), CSS, JS, SVG and thumbnails inline, no network at all.

Large runs stay small, by construction: with the defaults the page stays under
``PAGE_BOUND_BYTES`` (5 MiB) for any number of images. At most 50 clusters x 12 thumbnails
+ 20 near-duplicate groups x 8 + 24 outliers = 784 thumbnails, each at most
``MAX_THUMB_BYTES`` (4,000 base64 characters): 3.1 MB; a map of at most 4,000 points with
short titles: under 1 MB; tables capped at ``MAX_TABLE_ROWS`` rows and ``MAX_MATRIX_SIDE``
columns; a sweep's plots at ``MAX_PLOTS`` of ``MAX_PLOT_BYTES``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from rayclust.report.analysis import (
    NeighbourLists,
    ScoreTable,
    SweepOverview,
    cluster_exemplars,
    confusion_counts,
    find_matrices,
    format_score,
    headline_scores,
    matched_order,
    project_2d,
    read_sweep,
    sample_per_cluster,
    score_table,
)
from rayclust.report.thumbnails import ThumbnailCache, data_uri
from rayclust.runs import RunFolder

PAGE_BOUND_BYTES = 5 * 1024 * 1024
MAX_TABLE_ROWS = 200  # skipped files, near-duplicate groups, outliers, trials listed
MAX_MATRIX_SIDE = 40  # confusion matrix / heatmap rows and columns drawn
MAX_PLOTS = 8  # sweep plots inlined
MAX_PLOT_BYTES = 200_000  # a larger plot is named, not inlined
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
MAP_WIDTH, MAP_HEIGHT, MAP_PAD = 720, 480, 12

# A hook for folder kinds this package does not know yet: each section function gets the
# run folder and returns the section's HTML (escape what it inserts), or None.
SectionBuilder = Callable[[RunFolder], "str | None"]
EXTRA_SECTIONS: list[SectionBuilder] = []


def register_section(builder: SectionBuilder) -> SectionBuilder:
    """Add a report section (usable as a decorator)."""
    EXTRA_SECTIONS.append(builder)
    return builder


@cache
def _templates():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("rayclust.report", "templates"),
        autoescape=True,  # every value is escaped; trusted markup is passed as Markup
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
    )


def palette(n: int) -> list[str]:
    # Golden-angle hues: neighbouring cluster ids get well separated colours for any n.
    return [f"hsl({(i * 137.508) % 360:.1f},65%,{48 + 10 * (i % 2)}%)" for i in range(n)]


def heatmap(
    matrix: np.ndarray,
    row_names: Sequence[str],
    col_names: Sequence[str],
    *,
    fmt: str = "{:.0f}",
    css_class: str = "heatmap",
) -> dict[str, Any]:
    """A table whose cell shading follows the value (any matrix: counts, NMI, ...)."""
    matrix = np.asarray(matrix, dtype=float)
    finite = matrix[np.isfinite(matrix)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    rows = []
    for name, values in zip(row_names, matrix, strict=True):
        cells = []
        for v in values:
            if not np.isfinite(v):
                cells.append(None)
                continue
            alpha = max(v, 0) / top
            cells.append({"text": fmt.format(v), "alpha": f"{alpha:.2f}", "dark": alpha > 0.55})
        rows.append({"name": name, "cells": cells})
    return {"css_class": css_class, "columns": list(col_names), "rows": rows}


def heatmap_table(matrix: np.ndarray, row_names, col_names, **options: Any) -> str:
    """The heatmap as an HTML table string (for sections added with register_section)."""
    return (
        _templates()
        .get_template("macros.html.j2")
        .module.heatmap(heatmap(matrix, row_names, col_names, **options))
    )


@dataclass
class _Page:
    """Builds the page's sections from one run folder."""

    run: RunFolder
    features: np.ndarray | None
    cache: ThumbnailCache
    colors: dict[int, str]

    def thumb(self, row: int, caption: str = "") -> dict[str, Any]:
        run = self.run
        title = f"{run.paths[row]}\ncluster {run.clusters[row]}"
        if run.labels[row]:
            title += f", label {run.labels[row]}"
        uri = self.cache.uri(run.paths[row], run.image_ids[row])
        return {"uri": uri, "title": title, "caption": caption}

    def map_section(
        self, max_points: int, method: str, seed: int, why_missing: str
    ) -> dict[str, Any]:
        run, features = self.run, self.features
        if features is None or len(features) < 2:
            why = why_missing or "fewer than two images"
            return {"missing": f"No map: {why}."}
        rows = sample_per_cluster(run.clusters, max_points, np.random.default_rng(seed))
        coords, used = project_2d(features[rows], method, seed)
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        xy = (coords - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
        xs = MAP_PAD + xy[:, 0] * (MAP_WIDTH - 2 * MAP_PAD)
        ys = MAP_HEIGHT - MAP_PAD - xy[:, 1] * (MAP_HEIGHT - 2 * MAP_PAD)
        points = []
        for x, y, r in zip(xs, ys, rows, strict=True):
            c = int(run.clusters[r])
            title = f"{Path(run.paths[r]).name[:48]} - cluster {c}"
            if run.labels[r]:
                title += f", {run.labels[r][:32]}"
            points.append({"x": f"{x:.1f}", "y": f"{y:.1f}", "c": c, "title": title})
        ids, sizes = np.unique(run.clusters, return_counts=True)
        legend = [
            {"c": int(c), "n": f"{n:,}"}
            for c, n in list(zip(ids, sizes, strict=True))[: MAX_MATRIX_SIDE * 3]
        ]
        n = len(run.paths)
        sampled = f"{len(rows):,} of {n:,} images" if len(rows) < n else f"all {n:,} images"
        return {
            "missing": "",
            "method": used.upper(),
            "sampled": sampled,
            "points": points,
            "radius": 3.5 if len(points) <= 2000 else 2.2,
            "width": MAP_WIDTH,
            "height": MAP_HEIGHT,
            "legend": legend,
        }

    def confusion_section(self) -> dict[str, Any]:
        counts, label_names, cluster_ids = confusion_counts(self.run.labels, self.run.clusters)
        row_order, col_order = matched_order(counts, MAX_MATRIX_SIDE)
        note = ""
        if len(label_names) > MAX_MATRIX_SIDE or len(cluster_ids) > MAX_MATRIX_SIDE:
            note = (
                f"Showing the {min(len(label_names), MAX_MATRIX_SIDE)} largest labels and "
                f"{min(len(cluster_ids), MAX_MATRIX_SIDE)} clusters of {len(label_names)} x "
                f"{len(cluster_ids)}."
            )
        table = heatmap(
            counts[np.ix_(row_order, col_order)],
            [label_names[r] for r in row_order],
            [f"c{cluster_ids[c]}" for c in col_order],
            css_class="heatmap confusion",
        )
        return {"note": note, "heatmap": table}

    def clusters_section(self, max_thumbnails: int, max_shown: int) -> dict[str, Any]:
        run, features = self.run, self.features
        cluster_ids, sizes = np.unique(run.clusters, return_counts=True)
        shown = np.argsort(-sizes, kind="stable")[:max_shown]
        label_counts, label_names = None, []
        if run.has_labels:
            label_counts, label_names, _ = confusion_counts(run.labels, run.clusters)
        n_outlying = max_thumbnails // 3
        blocks = []
        for i in shown:
            c = int(cluster_ids[i])
            if features is not None:
                central, outlying = cluster_exemplars(
                    features, run.clusters, c, max_thumbnails - n_outlying, n_outlying
                )
            else:
                central = np.flatnonzero(run.clusters == c)[:max_thumbnails]
                outlying = central[:0]
            top = ""
            if label_counts is not None:
                column = label_counts[:, i]  # confusion_counts orders clusters as np.unique does
                j = int(np.argmax(column))
                top = f" - mostly {label_names[j]} ({column[j] / column.sum():.0%})"
            blocks.append(
                {
                    "c": c,
                    "color": self.colors[c],
                    "size": f"{sizes[i]:,}",
                    "top": top,
                    "central": [self.thumb(r) for r in central],
                    "outlying": [self.thumb(r, "outlier") for r in outlying],
                }
            )
        more = ""
        if len(cluster_ids) > len(shown):
            more = f"The {len(shown)} largest of {len(cluster_ids)} clusters."
        what = (
            "nearest the cluster centre, then (after the red bar) the farthest"
            if features is not None
            else "the first members (no features found for this run)"
        )
        return {"what": what, "more": more, "blocks": blocks}

    def neighbour_sections(self, neighbours: NeighbourLists) -> dict[str, Any]:
        groups, n = neighbours.groups, len(self.run.paths)
        scope = ""
        if neighbours.n_searched < n:
            scope = (
                f" Searched a sample of {neighbours.n_searched:,} of {n:,} images"
                " spread over the clusters."
            )
        n_show = min(24, len(neighbours.outlier_rows))
        return {
            "note": (
                f"{len(groups):,} group{'' if len(groups) == 1 else 's'} of near-duplicates "
                f"({sum(len(g) for g in groups):,} images); full list in near_duplicates.csv."
                f"{scope}"
            ),
            "groups": [
                {
                    "index": index,
                    "size": len(group),
                    "thumbs": [self.thumb(r) for r in group[:8]],
                    "extra": len(group) - 8 if len(group) > 8 else 0,
                }
                for index, group in enumerate(groups[:20])
            ],
            "outliers": [
                self.thumb(r, f"{s:.3f}")
                for r, s in zip(
                    neighbours.outlier_rows[:n_show],
                    neighbours.outlier_scores[:n_show],
                    strict=True,
                )
            ],
        }


def _summary_section(run: RunFolder, table: ScoreTable, sweep: SweepOverview | None) -> dict:
    metrics = run.metrics
    cards: list[tuple[Any, str]] = []
    if run.has_assignments or sweep is None:
        cards += [
            (f"{len(run.paths):,}", "images clustered"),
            (f"{len(run.skipped):,}", "skipped"),
            (len(np.unique(run.clusters)), "clusters"),
        ]
    if sweep is not None:
        objective = sweep.settings.get("objective") or {}
        cards += [(f"{len(sweep.trials):,}", "trials"), (sweep.n_errored, "errored")]
        cards += [(sweep.settings.get("stage"), "stage"), (objective.get("metric"), "objective")]
    facts = {
        "algorithm": metrics.get("algorithm")
        or (run.config.get("clustering") or {}).get("algorithm"),
        "method": metrics.get("method"),
        "views": ", ".join(metrics.get("views") or run.config.get("views") or []),
        "backend": metrics.get("backend"),
    }
    cards += [(value, key) for key, value in facts.items() if value]
    cards += headline_scores(table, metrics)
    columns = table.columns
    weights = metrics.get("view_weights") or {}
    if not isinstance(weights, dict):
        weights = dict(enumerate(weights))
    timings = metrics.get("timings") or {}
    return {
        "cards": [(value, name) for value, name in cards if value is not None],
        "detail": table.detail,
        "columns": [c.upper() for c in columns],
        "rows": [
            {
                "name": name,
                "primary": name == table.primary,
                "cells": [format_score(row.get(c)) for c in columns],
            }
            for name, row in table.rows.items()
        ],
        "weights": [(k, f"{float(v):.3f}") for k, v in weights.items()],
        "leader": metrics.get("leader") if weights else None,
        "selection": _selection_summary(metrics.get("selection")),
        "timings": ", ".join(
            f"{k.removesuffix('_s')} {float(v):.1f} s" for k, v in timings.items()
        ),
    }


def _selection_summary(selection: dict[str, Any] | None) -> dict[str, Any] | None:
    """The label-free choice (rayclust/selection.py): candidates, winner, why, the k curve."""
    if not selection:
        return None
    curve = selection.get("k_selection") or {}
    return {
        "why": f"{selection.get('chosen')}: {selection.get('why')}",
        "candidates": [
            (
                c["representation"],
                c["algorithm"],
                f"{c['knn_modularity']:.3f}",
                f"{c['seconds']:.1f} s",
            )
            for c in selection.get("candidates", [])
        ],  # fmt: skip
        "k_curve": ", ".join(
            f"{k}: {v:.3f}"
            for k, v in zip(curve.get("ks", []), curve.get("scores", []), strict=False)
        ),
        "k": curve.get("chosen"),
    }


def _sweep_section(sweep: SweepOverview) -> dict[str, Any]:
    rows = sweep.trials[:MAX_TABLE_ROWS]
    plots = []
    for path in sweep.plots[:MAX_PLOTS]:
        data = path.read_bytes()
        uri = data_uri(data, "image/png") if len(data) <= MAX_PLOT_BYTES else None
        plots.append({"name": path.stem, "uri": uri})
    return {
        "columns": list(rows[0]) if rows else [],
        "rows": [list(r.values()) for r in rows],
        "more": len(sweep.trials) - len(rows),
        "plots": plots,
    }


def _matrix_sections(run: RunFolder) -> list[dict[str, Any]]:
    sections = []
    for key, matrix in find_matrices(run.metrics) + find_matrices(run.reports):
        side = min(len(matrix), MAX_MATRIX_SIDE)
        names = [str(i) for i in range(side)]
        sections.append(
            {
                "anchor": "m-" + "".join(ch if ch.isalnum() else "-" for ch in key),
                "title": key,
                "short": key.split(".")[-1],
                "heatmap": heatmap(matrix[:side, :side], names, names, fmt="{:.2f}"),
            }
        )
    return sections


def build_report_html(
    run: RunFolder,
    features: np.ndarray | None,
    *,
    max_thumbnails_per_cluster: int = 12,
    max_clusters_shown: int = 50,
    max_map_points: int = 4000,
    map_method: str = "auto",
    neighbours: NeighbourLists | None = None,
    seed: int = 0,
    why_no_features: str = "",
    cache: ThumbnailCache | None = None,
) -> str:
    """The report page as a string (see :func:`rayclust.report.write_report`).

    features: one row per assignment (None: no map, first members as thumbnails, and
    ``why_no_features`` said in the map section).
    """
    if cache is None:
        storage_options = (run.config.get("input") or {}).get("storage_options")
        cache = ThumbnailCache(storage_options=storage_options)
    sweep = read_sweep(run)
    cluster_ids = [int(c) for c in np.unique(run.clusters)]
    page = _Page(
        run, features, cache, dict(zip(cluster_ids, palette(len(cluster_ids)), strict=True))
    )
    context: dict[str, Any] = {
        "csp": Markup(CSP),  # a constant; its quotes must stay as written
        "name": run.name,
        "source": _source(run.config),
        "colors": page.colors,
        "summary": _summary_section(run, score_table(run.metrics), sweep),
        "map": None,
        "confusion": None,
        "matrices": _matrix_sections(run),
        "clusters": None,
        "neighbours": None,
        "sweep": _sweep_section(sweep) if sweep is not None else None,
        "extra_sections": [Markup(html) for b in EXTRA_SECTIONS if (html := b(run))],
        "skipped": run.skipped[:MAX_TABLE_ROWS],
        "n_skipped": len(run.skipped),
        "max_table_rows": MAX_TABLE_ROWS,
    }
    if run.has_assignments:
        context["map"] = page.map_section(max_map_points, map_method, seed, why_no_features)
        if run.has_labels:
            context["confusion"] = page.confusion_section()
        context["clusters"] = page.clusters_section(max_thumbnails_per_cluster, max_clusters_shown)
        if neighbours is not None:
            context["neighbours"] = page.neighbour_sections(neighbours)
    context["nav"] = _navigation(context)
    return _templates().get_template("report.html.j2").render(context)


def _source(config: dict[str, Any]) -> str:
    """The collection a run read: ``input.source`` (cluster runs) or ``data.source`` (deep)."""
    for section in ("input", "data"):
        source = (config.get(section) or {}).get("source")
        if source:
            return str(source)
    return ""


def _navigation(context: dict[str, Any]) -> list[tuple[str, str]]:
    """(anchor, title) of each section on the page, in page order."""
    present = {
        "map-section": ("Map", context["map"]),
        "confusion": ("Confusion", context["confusion"]),
        "clusters": ("Clusters", context["clusters"]),
        "duplicates": ("Duplicates", context["neighbours"]),
        "outliers": ("Outliers", context["neighbours"]),
        "sweep": ("Sweep", context["sweep"]),
        "skipped": ("Skipped", context["skipped"]),
    }
    nav = [("summary", "Summary")]
    nav += [(a, t) for a, (t, shown) in list(present.items())[:2] if shown]
    nav += [(m["anchor"], m["short"]) for m in context["matrices"]]
    nav += [(a, t) for a, (t, shown) in list(present.items())[2:] if shown]
    return nav
