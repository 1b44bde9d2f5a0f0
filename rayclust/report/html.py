"""The report page: plain data from ``rayclust.report.analysis`` and ``.sections`` rendered by
Jinja2 templates (``templates/``, autoescaped), CSS, JS, SVG and thumbnails inline, no
network at all.

Large runs stay small, by construction: with the defaults the page stays under
``PAGE_BOUND_BYTES`` (5 MiB) for any number of images. Each thumbnail is inlined once, in the
page's data block, at most ``MAX_THUMBS`` (800) of at most ``MAX_THUMB_BYTES`` (4,000 base64
characters): 3.2 MB; cluster members listed by name: at most ``MAX_LISTED`` (10,000); a map
of at most 2,000 points as numbers; tables capped at ``MAX_TABLE_ROWS`` rows and
``MAX_MATRIX_SIDE`` columns; a sweep's plots at ``MAX_PLOTS`` of ``MAX_PLOT_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np
from markupsafe import Markup

from rayclust.report.analysis import (
    ScoreTable,
    SweepOverview,
    confusion_counts,
    find_matrices,
    format_score,
    headline_scores,
    matched_order,
    read_sweep,
    score_table,
)
from rayclust.report.neighbours import NeighbourLists
from rayclust.report.sections import (
    PageData,
    clusters_section,
    finish_clusters,
    finish_map,
    map_section,
    neighbour_sections,
    quality_section,
    short_label,
)
from rayclust.report.thumbnails import ThumbnailCache, data_uri
from rayclust.runs import RunFolder

PAGE_BOUND_BYTES = 5 * 1024 * 1024
MAX_TABLE_ROWS = 200  # skipped files, near-duplicate groups, outliers, trials listed
MAX_MATRIX_SIDE = 40  # confusion matrix / heatmap rows and columns drawn
MAX_PLOTS = 8  # sweep plots inlined
MAX_PLOT_BYTES = 200_000  # a larger plot is named, not inlined
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

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
        "k_curve": _k_curve(curve),
        "k": curve.get("chosen"),
        "k_method": curve.get("method", ""),
    }


K_CURVE_W, K_CURVE_H, K_CURVE_PAD = 360, 160, 28


def _k_curve(curve: dict[str, Any]) -> dict[str, Any] | None:
    """The score of each candidate k as an SVG polyline, the chosen k marked."""
    pairs = [
        (int(k), float(v))
        for k, v in zip(curve.get("ks") or [], curve.get("scores") or [], strict=False)
        if isinstance(v, int | float) and np.isfinite(v)
    ]
    if len(pairs) < 2:
        return None
    ks, scores = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    span = lambda a: (a - a.min()) / (a.max() - a.min() if a.max() > a.min() else 1.0)  # noqa: E731
    xs = K_CURVE_PAD + span(ks) * (K_CURVE_W - 2 * K_CURVE_PAD)
    ys = K_CURVE_H - K_CURVE_PAD - span(scores) * (K_CURVE_H - 2 * K_CURVE_PAD)
    points = [
        {
            "x": f"{x:.1f}",
            "y": f"{y:.1f}",
            "k": int(k),
            "v": f"{v:.3f}",
            "on": k == curve.get("chosen"),
        }
        for x, y, k, v in zip(xs, ys, ks, scores, strict=True)
    ]
    return {
        "width": K_CURVE_W,
        "height": K_CURVE_H,
        "line": " ".join(f"{p['x']},{p['y']}" for p in points),
        "points": points,
        "range": (f"{scores.min():.3f}", f"{scores.max():.3f}"),
        "bottom": K_CURVE_H - 8,
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
    max_map_points: int = 2000,
    map_method: str = "tsne",
    neighbours: NeighbourLists | None = None,
    seed: int = 0,
    why_no_features: str = "",
    cache: ThumbnailCache | None = None,
    quality_rows: list | None = None,
    feature_rows: np.ndarray | None = None,
) -> str:
    """The report page as a string (see :func:`rayclust.report.write_report`).

    features: one row per assignment (None: no map, first members as thumbnails, and
    ``why_no_features`` said in the map section). quality_rows: a list that receives the
    image quality CSV rows (path, width, height, blur, brightness). feature_rows: the
    assignment row of each row of ``features`` when they are a sample of the rows (the map,
    exemplars and member order then come from the sample).
    """
    if cache is None:
        storage_options = (run.config.get("input") or {}).get("storage_options")
        cache = ThumbnailCache(storage_options=storage_options)
    sweep = read_sweep(run)
    cluster_ids = [int(c) for c in np.unique(run.clusters)]
    colors = dict(zip(cluster_ids, palette(len(cluster_ids)), strict=True))
    data = PageData(run, cache)
    context: dict[str, Any] = {
        "csp": Markup(CSP),  # a constant; its quotes must stay as written
        "name": run.name,
        "source": _source(run.config),
        "colors": colors,
        "summary": _summary_section(run, score_table(run.metrics), sweep),
        "map": None,
        "confusion": None,
        "matrices": _matrix_sections(run),
        "clusters": None,
        "neighbours": None,
        "quality": None,
        "sweep": _sweep_section(sweep) if sweep is not None else None,
        "extra_sections": [Markup(html) for b in EXTRA_SECTIONS if (html := b(run))],
        "skipped": run.skipped[:MAX_TABLE_ROWS],
        "n_skipped": len(run.skipped),
        "max_table_rows": MAX_TABLE_ROWS,
    }
    script_data: dict[str, Any] = {"colors": colors, "labelColors": {}}
    if run.has_assignments:
        context["map"] = map_section(
            data, features, max_map_points, map_method, seed, why_no_features, feature_rows
        )
        majority: dict[int, tuple[str, float]] = {}
        if run.has_labels:
            context["confusion"] = _confusion_section(run)
            majority = _cluster_majority(run)
            names = sorted({short_label(label) for label in run.labels})
            script_data["labelColors"] = dict(zip(names, palette(len(names)), strict=True))
        context["clusters"] = clusters_section(
            data,
            features,
            max_thumbnails_per_cluster,
            max_clusters_shown,
            majority,
            feature_rows,
        )
        if neighbours is not None:
            context["neighbours"] = neighbour_sections(data, neighbours)
        context["quality"], rows = quality_section(data, seed)
        if quality_rows is not None:
            quality_rows += rows
        finish_map(data, context["map"])
        finish_clusters(data, context["clusters"])
        script_data["map"] = context["map"]
        script_data["members"] = {str(b["c"]): b["members"] for b in context["clusters"]["blocks"]}
        script_data["perPage"] = context["clusters"]["per_page"]
    script_data.update(data.block())
    # "<" escaped: no string in the data (a file name, a label) can close the script tag.
    context["data_json"] = Markup(json.dumps(script_data).replace("<", "\\u003c"))
    context["nav"] = _navigation(context)
    return _templates().get_template("report.html.j2").render(context)


def _confusion_section(run: RunFolder) -> dict[str, Any]:
    counts, label_names, cluster_ids = confusion_counts(run.labels, run.clusters)
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


def _cluster_majority(run: RunFolder) -> dict[int, tuple[str, float]]:
    """Each cluster's most common label and its share."""
    counts, label_names, cluster_ids = confusion_counts(run.labels, run.clusters)
    out = {}
    for i, c in enumerate(cluster_ids):
        j = int(np.argmax(counts[:, i]))
        out[int(c)] = (label_names[j], counts[j, i] / counts[:, i].sum())
    return out


def _source(config: dict[str, Any]) -> str:
    """The collection a run read: ``input.source`` (cluster runs) or ``data.source`` (deep)."""
    for section in ("input", "data"):
        source = (config.get(section) or {}).get("source")
        if source:
            return str(source)
    return ""


def _navigation(context: dict[str, Any]) -> list[tuple[str, str]]:
    """(anchor, title) of each section on the page, in page order."""
    neighbours = context["neighbours"]
    present = {
        "map-section": ("Map", context["map"]),
        "confusion": ("Confusion", context["confusion"]),
        "clusters": ("Clusters", context["clusters"]),
        "duplicates": ("Duplicates", neighbours),
        "mislabelled": ("Mislabelled?", neighbours and neighbours["mislabelled"]),
        "outliers": ("Outliers", neighbours),
        "quality": ("Quality", context["quality"] and context["quality"]["figures"]),
        "sweep": ("Sweep", context["sweep"]),
        "skipped": ("Skipped", context["skipped"]),
    }
    nav = [("summary", "Summary")]
    nav += [(a, t) for a, (t, shown) in list(present.items())[:2] if shown]
    nav += [(m["anchor"], m["short"]) for m in context["matrices"]]
    nav += [(a, t) for a, (t, shown) in list(present.items())[2:] if shown]
    return nav
