"""One self-contained HTML page per run: scores, clusters as thumbnails, a 2-D map, and more.

``write_report(run_dir)`` reads a finished run folder (see ``rayclust.pipeline``), loads the
run's features from the FeatureStore when it can, and writes beside the other outputs:

- ``report.html``: no network at all (a CSP meta tag forbids it); CSS, JS and SVG are inline
  and thumbnails are base64 JPEG data URIs.
- ``near_duplicates.csv`` (group,path) and ``outliers.csv`` (path,score), both from a kNN
  graph over the features (cosine distance).

Large runs stay small, by construction: with the defaults the page stays under
``PAGE_BOUND_BYTES`` (5 MiB) for any number of images. At most 50 clusters x 12 thumbnails
+ 20 near-duplicate groups x 8 + 24 outliers = 784 thumbnails, each a ``THUMB_PX`` px JPEG
of at most ``MAX_THUMB_BYTES`` (4,000 base64 characters): 3.1 MB; a map of at most 4,000
points with short titles: under 1 MB; tables capped at ``MAX_TABLE_ROWS`` rows and
``MAX_MATRIX_SIDE`` columns. Measured: 2.2 MB for 100,000 rows in 1,000 clusters
(benchmarks/report_size.py; tests/test_report.py checks a 100,000-row run). The kNN lists
use an exact graph over at most ``max_knn_rows`` rows (a sample spread over the clusters
beyond that), so a million-row report takes the time of a 20,000-row one plus reading.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("rayclust")

PAGE_BOUND_BYTES = 5 * 1024 * 1024
THUMB_PX = 96
THUMB_QUALITY = 70
MAX_THUMB_BYTES = 3000  # JPEG bytes; base64 makes it 4,000 characters in the page
MAX_TABLE_ROWS = 200  # skipped files, near-duplicate groups, outliers listed in the page
MAX_MATRIX_SIDE = 40  # confusion matrix / heatmap rows and columns drawn
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


class ReportError(ValueError):
    """A run folder the report cannot be built from; the message says what is missing."""


# --------------------------------------------------------------------------- reading a run


@dataclass
class RunFolder:
    """Everything the report reads from a run folder, as plain data."""

    run_dir: Path
    paths: list[str]
    image_ids: list[str]
    clusters: np.ndarray
    labels: list[str]  # "" where the image has none
    metrics: dict[str, Any]
    config: dict[str, Any]
    skipped: list[dict[str, str]]
    mlflow: dict[str, Any] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return bool(self.labels) and all(self.labels)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_run_folder(run_dir: str | Path) -> RunFolder:
    """Read assignments, metrics, config, skipped list and MLflow pointer of a run folder."""
    import yaml

    run_dir = Path(run_dir)
    assignments_path = run_dir / "assignments.csv"
    if not assignments_path.is_file():
        raise ReportError(
            f"{assignments_path} is missing: {run_dir} is not a finished run folder "
            "(expected assignments.csv, metrics.json, config.yaml)"
        )
    rows = _read_csv(assignments_path)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    config_path = run_dir / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    mlflow_path = run_dir / "mlflow.json"
    mlflow_info = json.loads(mlflow_path.read_text()) if mlflow_path.is_file() else {}
    return RunFolder(
        run_dir=run_dir,
        paths=[r["path"] for r in rows],
        image_ids=[r["image_id"] for r in rows],
        clusters=np.array([int(r["cluster"]) for r in rows], dtype=np.int64),
        labels=[r.get("label", "") or "" for r in rows],
        metrics=metrics,
        config=config,
        skipped=_read_csv(run_dir / "skipped.csv"),
        mlflow=mlflow_info,
    )


def load_run_features(run: RunFolder) -> np.ndarray | None:
    """The run's features, L2-normalised, views concatenated; None when the store lacks them."""
    from rayclust.views import FeatureStore, get_view_spec

    cache_dir = (run.config.get("extraction") or {}).get("cache_dir")
    views = run.config.get("views") or []
    if not cache_dir or not views or not run.image_ids:
        return None
    parts = []
    for view in views:
        try:
            store = FeatureStore(Path(cache_dir), get_view_spec(view).key())
            feats = np.asarray(store.get(run.image_ids), dtype=np.float32)
        except Exception as exc:  # a moved cache or an unknown view must not kill the report
            log.warning(
                "report: no features for view %r (%s); map and kNN lists left out", view, exc
            )
            return None
        parts.append(_l2_normalize(feats) / math.sqrt(len(views)))
    return np.concatenate(parts, axis=1)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- analysis


def _sample_per_cluster(clusters: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices, at most `limit`, drawn evenly across clusters (small ones kept whole)."""
    n = len(clusters)
    if n <= limit:
        return np.arange(n)
    ids, counts = np.unique(clusters, return_counts=True)
    # Water-filling: each cluster gets min(count, share) with the share raised until full.
    quota = np.zeros_like(counts)
    remaining = limit
    open_ = np.ones(len(ids), dtype=bool)
    while remaining > 0 and open_.any():
        share = max(remaining // int(open_.sum()), 1)
        for i in np.flatnonzero(open_):
            take = min(share, counts[i] - quota[i], remaining)
            quota[i] += take
            remaining -= take
            if quota[i] == counts[i]:
                open_[i] = False
            if remaining == 0:
                break
    chosen = []
    for cluster_id, q in zip(ids, quota, strict=True):
        members = np.flatnonzero(clusters == cluster_id)
        chosen.append(rng.choice(members, size=int(q), replace=False))
    return np.sort(np.concatenate(chosen))


def project_2d(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows and the method used: UMAP when installed, else PCA.

    method: "auto", "umap", "tsne" or "pca".
    """
    if method not in ("auto", "umap", "tsne", "pca"):
        raise ValueError(f"method={method!r} should be 'auto', 'umap', 'tsne' or 'pca'")
    if method == "auto":
        try:
            import umap  # noqa: F401

            method = "umap"
        except ImportError:
            method = "pca"
    n = len(features)
    if n < 3 or features.shape[1] < 2:
        coords = np.zeros((n, 2))
        coords[:, 0] = features[:, 0] if features.shape[1] else 0
        return coords, "pca"
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1))
        return reducer.fit_transform(features), "umap"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (n - 1) / 3)))
        coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            features
        )
        return coords, "tsne"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(features), "pca"


@dataclass
class NeighbourLists:
    """Near-duplicate groups and outlier scores from one kNN graph."""

    groups: list[np.ndarray]  # row indices per group of near-duplicates, largest first
    outlier_rows: np.ndarray  # rows sorted by score, highest first
    outlier_scores: np.ndarray  # mean cosine distance to the k nearest neighbours
    n_searched: int = 0  # rows the kNN graph covered (a sample on large runs)

    def mapped(self, rows: np.ndarray) -> NeighbourLists:
        """The same lists with row numbers of a sample mapped back to the full run."""
        return NeighbourLists(
            [rows[g] for g in self.groups], rows[self.outlier_rows], self.outlier_scores, len(rows)
        )


def find_neighbour_lists(
    features: np.ndarray,
    *,
    n_neighbors: int = 10,
    duplicate_distance: float = 0.02,
    max_outliers: int = 1000,
    random_state: int = 0,
) -> NeighbourLists:
    """Near-duplicates: connected components of kNN edges with cosine distance <=
    `duplicate_distance`. Outliers: the rows with the largest mean distance to their k nearest
    neighbours (a local-density score; duplicates of one another never count as outliers)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    from rayclust.cluster import NearestNeighbors

    n = len(features)
    if n < 2:
        return NeighbourLists([], np.zeros(0, np.int64), np.zeros(0))
    k = min(n_neighbors, n - 1)
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", method="exact", random_state=random_state)
    distances, indices = nn.fit(features).kneighbors()
    valid = np.isfinite(distances) & (indices >= 0)
    close = valid & (distances <= duplicate_distance)
    rows = np.repeat(np.arange(n), k).reshape(n, k)[close]
    graph = sp.csr_matrix((np.ones(rows.size), (rows, indices[close])), shape=(n, n))
    _, component = connected_components(graph, directed=True, connection="weak")
    sizes = np.bincount(component)
    groups = [np.flatnonzero(component == c) for c in np.flatnonzero(sizes > 1)]
    groups.sort(key=lambda g: (-len(g), int(g[0])))

    masked = np.where(valid, distances, np.nan)
    scores = np.nan_to_num(np.nanmean(masked, axis=1), nan=0.0)
    order = np.argsort(-scores, kind="stable")[: min(max_outliers, n)]
    return NeighbourLists(groups, order, scores[order], n)


def cluster_exemplars(
    features: np.ndarray, clusters: np.ndarray, cluster_id: int, n_central: int, n_outlying: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one cluster nearest its centre, and the farthest ones (not repeating those)."""
    members = np.flatnonzero(clusters == cluster_id)
    centre = features[members].mean(axis=0)
    dist = np.linalg.norm(features[members] - centre, axis=1)
    order = members[np.argsort(dist, kind="stable")]
    central = order[:n_central]
    rest = order[len(central) :]
    outlying = rest[::-1][:n_outlying]
    return central, outlying


# --------------------------------------------------------------------------- rendering helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _palette(n: int) -> list[str]:
    # Golden-angle hues: neighbouring cluster ids get well separated colours for any n.
    return [f"hsl({(i * 137.508) % 360:.1f},65%,{48 + 10 * (i % 2)}%)" for i in range(n)]


class ThumbnailCache:
    """Base64 JPEG data URIs, made once per image id (repeated images cost one decode)."""

    def __init__(
        self,
        size: int = THUMB_PX,
        quality: int = THUMB_QUALITY,
        storage_options: dict | None = None,  # for s3:// / gs:// paths (rayclust.remote)
    ) -> None:
        self.size = size
        self.quality = quality
        self.storage_options = storage_options
        self._uris: dict[str, str | None] = {}

    def uri(self, path: str, image_id: str) -> str | None:
        if image_id not in self._uris:
            self._uris[image_id] = self._make(path)
        return self._uris[image_id]

    def _make(self, path: str) -> str | None:
        from rayclust.images import ImageDecodeError, decode_image

        try:
            img = decode_image(path, target_size=self.size, storage_options=self.storage_options)
        except (ImageDecodeError, OSError) as exc:
            log.warning("report: no thumbnail for %s (%s)", path, exc)
            return None
        img.thumbnail((self.size, self.size))
        return "data:image/jpeg;base64," + base64.b64encode(_jpeg_within(img, self.quality)).decode(
            "ascii"
        )


def _jpeg_within(img: Any, quality: int, max_bytes: int = MAX_THUMB_BYTES) -> bytes:
    """JPEG bytes of img, lowering the quality (then the size) until at most max_bytes: the
    page bound rests on this per-thumbnail cap, whatever the images look like."""
    while True:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        data = buf.getvalue()
        if len(data) <= max_bytes or (quality <= 20 and min(img.size) <= 16):
            return data
        if quality > 20:
            quality -= 15
        else:
            img = img.resize((max(img.width * 3 // 4, 1), max(img.height * 3 // 4, 1)))


def _thumb(run: RunFolder, row: int, cache: ThumbnailCache, caption: str = "") -> str:
    path = run.paths[row]
    uri = cache.uri(path, run.image_ids[row])
    title = _esc(
        f"{path}\ncluster {run.clusters[row]}"
        + (f", label {run.labels[row]}" if run.labels[row] else "")
    )
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    if uri is None:
        return f'<figure class="thumb missing" title="{title}"><div>unreadable</div>{cap}</figure>'
    return f'<figure class="thumb" title="{title}"><img src="{uri}" alt="" loading="eager">{cap}</figure>'


def _fmt(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    mean, std = summary.get("mean"), summary.get("std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.3f} ({std:.3f})" if std is not None else f"{mean:.3f}"


def _metrics_table(rows: dict[str, dict[str, Any]], primary: str | None) -> str:
    names: list[str] = []
    for summary in rows.values():
        for name in summary:
            if name not in names:
                names.append(name)
    # External scores first, in the order papers print them; internal scores after.
    preferred = ["acc", "nmi", "ami", "ari", "pur", "fmi"]
    names.sort(key=lambda n: (preferred.index(n) if n in preferred else len(preferred), ""))
    head = "".join(f"<th>{_esc(n.upper())}</th>" for n in names)
    body = []
    for row, summary in rows.items():
        cls = ' class="primary"' if row == primary else ""
        cells = "".join(f"<td>{_fmt(summary.get(n))}</td>" for n in names)
        body.append(f"<tr{cls}><th>{_esc(row)}</th>{cells}</tr>")
    return (
        f'<div class="scroll"><table class="metrics"><tr><th></th>{head}</tr>'
        f"{''.join(body)}</table></div>"
    )


def heatmap_table(
    matrix: np.ndarray,
    row_names: Sequence[str],
    col_names: Sequence[str],
    *,
    fmt: str = "{:.0f}",
    css_class: str = "heatmap",
) -> str:
    """An HTML table whose cell shading follows the value (any matrix: counts, NMI, ...)."""
    matrix = np.asarray(matrix, dtype=float)
    finite = matrix[np.isfinite(matrix)]
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    head = "".join(f"<th>{_esc(c)}</th>" for c in col_names)
    body = []
    for name, values in zip(row_names, matrix, strict=True):
        cells = []
        for v in values:
            if not np.isfinite(v):
                cells.append("<td></td>")
                continue
            alpha = max(v, 0) / top
            color = "#fff" if alpha > 0.55 else "#222"
            cells.append(
                f'<td style="background:rgba(37,99,235,{alpha:.2f});color:{color}">'
                f"{fmt.format(v)}</td>"
            )
        body.append(f"<tr><th>{_esc(name)}</th>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="{css_class}"><tr><th></th>{head}</tr>'
        f"{''.join(body)}</table></div>"
    )


def confusion_counts(
    labels: Sequence[str], clusters: np.ndarray
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Counts[label, cluster] with the sorted label names and cluster ids they index."""
    label_names = sorted(set(labels))
    index = {name: i for i, name in enumerate(label_names)}
    label_codes = np.fromiter((index[name] for name in labels), dtype=np.int64, count=len(labels))
    cluster_ids, cluster_codes = np.unique(clusters, return_inverse=True)
    counts = np.zeros((len(label_names), len(cluster_ids)), dtype=np.int64)
    np.add.at(counts, (label_codes, cluster_codes), 1)
    return counts, label_names, cluster_ids


def _confusion_section(run: RunFolder) -> str:
    from scipy.optimize import linear_sum_assignment

    counts, label_names, cluster_ids = confusion_counts(run.labels, run.clusters)
    # Order clusters by their best-matching label so a good clustering shows a diagonal.
    matched_rows, matched_cols = linear_sum_assignment(-counts)
    match = dict(zip(matched_rows.tolist(), matched_cols.tolist(), strict=True))
    row_order = np.argsort(-counts.sum(axis=1), kind="stable")[:MAX_MATRIX_SIDE].tolist()
    col_order = [match[r] for r in row_order if r in match]
    taken = set(col_order)
    col_order += [
        c for c in np.argsort(-counts.sum(axis=0), kind="stable").tolist() if c not in taken
    ]
    col_order = col_order[:MAX_MATRIX_SIDE]
    note = ""
    if len(label_names) > MAX_MATRIX_SIDE or len(cluster_ids) > MAX_MATRIX_SIDE:
        note = (
            f"<p class='note'>Showing the {min(len(label_names), MAX_MATRIX_SIDE)} largest labels "
            f"and {min(len(cluster_ids), MAX_MATRIX_SIDE)} clusters of {len(label_names)} x "
            f"{len(cluster_ids)}.</p>"
        )
    table = heatmap_table(
        counts[np.ix_(row_order, col_order)],
        [label_names[r] for r in row_order],
        [f"c{cluster_ids[c]}" for c in col_order],
        css_class="heatmap confusion",
    )
    return (
        '<section id="confusion"><h2>Confusion matrix</h2>'
        "<p class='note'>Rows: labels; columns: clusters, matched to labels (Hungarian).</p>"
        f"{note}{table}</section>"
    )


def _map_svg(
    coords: np.ndarray, clusters: np.ndarray, titles: Sequence[str], colors: dict[int, str]
) -> str:
    width, height, pad = 720, 480, 12
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    xy = (coords - lo) / span
    xs = pad + xy[:, 0] * (width - 2 * pad)
    ys = height - pad - xy[:, 1] * (height - 2 * pad)
    radius = 3.5 if len(coords) <= 2000 else 2.2
    dots = []
    for x, y, c, t in zip(xs, ys, clusters, titles, strict=True):
        dots.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colors[int(c)]}" '
            f'data-c="{int(c)}"><title>{_esc(t)}</title></circle>'
        )
    return (
        f'<svg id="map" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="2-D map of the features">'
        f'<rect width="{width}" height="{height}" fill="#fafafa"/>{"".join(dots)}</svg>'
    )


def _find_matrices(metrics: Any, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """Square numeric matrices anywhere in metrics.json (e.g. divclust.inter_head_nmi)."""
    found = []
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            found += _find_matrices(value, f"{prefix}{key}.")
    elif (
        isinstance(metrics, list)
        and len(metrics) >= 2
        and all(isinstance(r, list) and len(r) == len(metrics) for r in metrics)
    ):
        try:
            matrix = np.asarray(metrics, dtype=float)
        except (TypeError, ValueError):
            return found
        found.append((prefix.rstrip("."), matrix))
    return found


# A hook for folder kinds this module does not know yet (e.g. a Tune sweep): each section
# function gets the run folder and returns HTML, or None when it has nothing to show.
SectionBuilder = Callable[[RunFolder], "str | None"]
EXTRA_SECTIONS: list[SectionBuilder] = []


def register_section(builder: SectionBuilder) -> SectionBuilder:
    """Add a report section (usable as a decorator); sweeps plug their plots in here."""
    EXTRA_SECTIONS.append(builder)
    return builder


@register_section
def _sweep_section(run: RunFolder) -> str | None:
    trials = run.run_dir / "trials.csv"
    if not trials.is_file():
        return None
    rows = _read_csv(trials)[:MAX_TABLE_ROWS]
    if not rows:
        return None
    head = "".join(f"<th>{_esc(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    return (
        f'<section id="sweep"><h2>Sweep trials</h2><div class="scroll"><table>'
        f"<tr>{head}</tr>{body}</table></div></section>"
    )


# --------------------------------------------------------------------------- the page

_CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
margin:0;color:#1f2937;background:#f3f4f6}header{background:#111827;color:#f9fafb;padding:18px 28px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#9ca3af}
nav{padding:6px 28px;background:#1f2937}nav a{color:#93c5fd;margin-right:14px;text-decoration:none}
main{padding:12px 28px 40px;max-width:1560px}section{background:#fff;border-radius:8px;
padding:14px 18px;margin:14px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}h2{margin:0 0 10px;font-size:18px}
h3{margin:12px 0 6px;font-size:15px}.note{color:#6b7280;margin:4px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#f9fafb;border:1px solid #e5e7eb;
border-radius:6px;padding:8px 14px;min-width:120px}.card b{display:block;font-size:20px}
.card span{color:#6b7280;font-size:12px}table{border-collapse:collapse;margin:4px 0}
th,td{border:1px solid #e5e7eb;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f9fafb;font-weight:600}tr.primary th,tr.primary td{background:#eff6ff}
td.path,th.path{text-align:left;white-space:normal;word-break:break-all}
.heatmap td{min-width:34px;text-align:center}.scroll{overflow:auto;max-height:640px}
.grid{display:flex;flex-wrap:wrap;gap:3px;align-items:flex-start}
.thumb{margin:0;width:90px;text-align:center}.thumb img{width:88px;height:88px;object-fit:contain;
background:#fff;border:1px solid #e5e7eb;border-radius:4px;display:block;margin:auto}
.thumb.missing div{width:88px;height:88px;background:#fee2e2;color:#991b1b;font-size:11px;
display:flex;align-items:center;justify-content:center;border-radius:4px}
figcaption{font-size:11px;color:#6b7280;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cluster{border-top:1px solid #e5e7eb;padding:8px 0}.cluster h3 .sw{display:inline-block;width:12px;
height:12px;border-radius:50%;margin-right:6px;vertical-align:-1px}
.sep{width:2px;align-self:stretch;background:#fca5a5;margin:0 6px}.legend{display:flex;flex-wrap:wrap;
gap:8px;font-size:12px;margin-top:6px}.legend span{cursor:pointer}.legend i{display:inline-block;
width:10px;height:10px;border-radius:50%;margin-right:3px}#map{max-width:100%;height:auto;
border:1px solid #e5e7eb;border-radius:6px}#map circle{opacity:.8}#map.focus circle{opacity:.08}
#map.focus circle.on{opacity:1}
"""

# Clicking a legend entry highlights that cluster on the map (plain DOM, no library).
_JS = """
document.querySelectorAll('.legend span').forEach(function(el){el.addEventListener('click',
function(){var map=document.getElementById('map'),c=el.dataset.c,on=map.dataset.focus===c;
map.classList.toggle('focus',!on);map.dataset.focus=on?'':c;map.querySelectorAll('circle')
.forEach(function(p){p.classList.toggle('on',!on&&p.dataset.c===c)});});});
"""


def _card(value: Any, name: str) -> str:
    return f'<div class="card"><b>{_esc(value)}</b><span>{_esc(name)}</span></div>'


def _write_rows(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


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
) -> str:
    """The report page as a string (see :func:`write_report`)."""
    rng = np.random.default_rng(seed)
    metrics = run.metrics
    cache = ThumbnailCache(storage_options=(run.config.get("input") or {}).get("storage_options"))
    cluster_ids, cluster_sizes = np.unique(run.clusters, return_counts=True)
    colors = dict(zip((int(c) for c in cluster_ids), _palette(len(cluster_ids)), strict=True))
    sections: list[str] = []
    nav: list[tuple[str, str]] = []

    # Summary
    name = run.config.get("name") or run.run_dir.name
    summary = metrics.get("summary") or {}
    cards = [
        _card(f"{len(run.paths):,}", "images clustered"),
        _card(f"{len(run.skipped):,}", "skipped"),
        _card(len(cluster_ids), "clusters"),
    ]
    facts = {
        "algorithm": metrics.get("algorithm")
        or (run.config.get("clustering") or {}).get("algorithm"),
        "views": ", ".join(metrics.get("views") or run.config.get("views") or []),
        "backend": metrics.get("backend"),
    }
    cards += [_card(value, key) for key, value in facts.items() if value]
    for key in ("acc", "nmi", "ari"):
        if key in summary:
            cards.append(_card(_fmt(summary[key]), f"{key.upper()} AVG(SD)"))
    seeds = (next(iter(summary.values()), {}) or {}).get("n") if summary else None
    detail = f"AVG(SD) over {seeds} seeds" if seeds else "scores"
    table = metrics.get("table") or ({metrics.get("primary", "run"): summary} if summary else {})
    body = f'<div class="cards">{"".join(cards)}</div>'
    if table:
        body += f"<h3>Scores, {detail}</h3>" + _metrics_table(table, metrics.get("primary"))
    if metrics.get("view_weights"):
        weights = metrics["view_weights"]
        items = weights.items() if isinstance(weights, dict) else enumerate(weights)
        body += (
            "<h3>Per-view weights</h3><table><tr>"
            + "".join(f"<th>{_esc(k)}</th>" for k, _ in items)
            + "</tr><tr>"
            + "".join(
                f"<td>{float(v):.3f}</td>"
                for _, v in (weights.items() if isinstance(weights, dict) else enumerate(weights))
            )
            + "</tr></table>"
        )
        if metrics.get("leader"):
            body += f"<p class='note'>Leader view: {_esc(metrics['leader'])}</p>"
    timings = metrics.get("timings") or {}
    if timings:
        body += (
            "<p class='note'>Timings: "
            + ", ".join(
                f"{_esc(k.removesuffix('_s'))} {float(v):.1f} s" for k, v in timings.items()
            )
            + "</p>"
        )
    sections.append(f'<section id="summary"><h2>Summary</h2>{body}</section>')
    nav.append(("summary", "Summary"))

    # Map
    if features is not None and len(features) >= 2:
        rows = _sample_per_cluster(run.clusters, max_map_points, rng)
        coords, used = project_2d(features[rows], map_method, seed)
        titles = [
            f"{Path(run.paths[r]).name[:48]} - cluster {run.clusters[r]}"
            + (f", {run.labels[r][:32]}" if run.labels[r] else "")
            for r in rows
        ]
        legend = "".join(
            f'<span data-c="{c}"><i style="background:{colors[int(c)]}"></i>c{c} ({n:,})</span>'
            for c, n in list(zip(cluster_ids, cluster_sizes, strict=True))[: MAX_MATRIX_SIDE * 3]
        )
        sampled = (
            f"{len(rows):,} of {len(run.paths):,} images"
            if len(rows) < len(run.paths)
            else f"all {len(rows):,} images"
        )
        sections.append(
            f'<section id="map-section"><h2>Feature map</h2><p class="note">{used.upper()} of the '
            f"features, {sampled}, coloured by cluster (click a cluster below to highlight it)."
            f"</p>{_map_svg(coords, run.clusters[rows], titles, colors)}"
            f'<div class="legend">{legend}</div></section>'
        )
        nav.append(("map-section", "Map"))

    # Confusion matrix
    if run.has_labels:
        sections.append(_confusion_section(run))
        nav.append(("confusion", "Confusion"))

    # Other matrices in metrics.json (DivClust inter-head NMI, ...)
    for key, matrix in _find_matrices(metrics):
        side = min(len(matrix), MAX_MATRIX_SIDE)
        names = [str(i) for i in range(side)]
        anchor = "m-" + "".join(ch if ch.isalnum() else "-" for ch in key)
        sections.append(
            f'<section id="{anchor}"><h2>{_esc(key)}</h2>'
            + heatmap_table(matrix[:side, :side], names, names, fmt="{:.2f}")
            + "</section>"
        )
        nav.append((anchor, key.split(".")[-1]))

    # Clusters
    order = np.argsort(-cluster_sizes, kind="stable")
    shown = order[:max_clusters_shown]
    label_counts, label_names = None, []
    if run.has_labels:
        label_counts, label_names, _ = confusion_counts(run.labels, run.clusters)
    n_outlying = max_thumbnails_per_cluster // 3
    n_central = max_thumbnails_per_cluster - n_outlying
    blocks = []
    for i in shown:
        c = int(cluster_ids[i])
        if features is not None:
            central, outlying = cluster_exemplars(features, run.clusters, c, n_central, n_outlying)
        else:
            members = np.flatnonzero(run.clusters == c)
            central = members[:max_thumbnails_per_cluster]
            outlying = members[:0]
        thumbs = "".join(_thumb(run, r, cache) for r in central)
        if len(outlying):
            thumbs += '<div class="sep" title="outliers of this cluster"></div>'
            thumbs += "".join(_thumb(run, r, cache, "outlier") for r in outlying)
        top = ""
        if label_counts is not None:
            column = label_counts[:, i]  # confusion_counts orders clusters as np.unique does
            j = int(np.argmax(column))
            top = f" - mostly {_esc(label_names[j])} ({column[j] / column.sum():.0%})"
        blocks.append(
            f'<div class="cluster" id="c{c}"><h3><span class="sw" style="background:{colors[c]}">'
            f"</span>Cluster {c} - {cluster_sizes[i]:,} images{top}</h3>"
            f'<div class="grid">{thumbs}</div></div>'
        )
    more = ""
    if len(cluster_ids) > len(shown):
        more = f"<p class='note'>The {len(shown)} largest of {len(cluster_ids)} clusters.</p>"
    what = (
        "nearest the cluster centre, then (after the red bar) the farthest"
        if features is not None
        else "the first members (no features found for this run)"
    )
    sections.append(
        f'<section id="clusters"><h2>Clusters</h2><p class="note">Thumbnails: images {what}.</p>'
        f"{more}{''.join(blocks)}</section>"
    )
    nav.append(("clusters", "Clusters"))

    # Near-duplicates and outliers
    if neighbours is not None:
        groups = neighbours.groups
        scope = ""
        if neighbours.n_searched < len(run.paths):
            scope = (
                f" Searched a sample of {neighbours.n_searched:,} of {len(run.paths):,} images"
                " spread over the clusters."
            )
        parts = [
            f"<p class='note'>{len(groups):,} group{'' if len(groups) == 1 else 's'} of near-duplicates "
            f"({sum(len(g) for g in groups):,} images); full list in near_duplicates.csv.{scope}</p>"
        ]
        for g_index, group in enumerate(groups[:20]):
            thumbs = "".join(_thumb(run, r, cache) for r in group[:8])
            extra = f"<span class='note'>+{len(group) - 8} more</span>" if len(group) > 8 else ""
            parts.append(
                f"<h3>Group {g_index} ({len(group)} images)</h3><div class='grid'>{thumbs}{extra}</div>"
            )
        sections.append(
            f'<section id="duplicates"><h2>Near-duplicates</h2>{"".join(parts)}</section>'
        )
        n_show = min(24, len(neighbours.outlier_rows))
        thumbs = "".join(
            _thumb(run, r, cache, f"{s:.3f}")
            for r, s in zip(
                neighbours.outlier_rows[:n_show], neighbours.outlier_scores[:n_show], strict=True
            )
        )
        sections.append(
            '<section id="outliers"><h2>Outliers</h2><p class="note">Largest mean cosine distance '
            f"to the nearest neighbours; full list in outliers.csv.</p><div class='grid'>{thumbs}</div></section>"
        )
        nav += [("duplicates", "Duplicates"), ("outliers", "Outliers")]

    # Extra sections (sweeps, ...)
    for builder in EXTRA_SECTIONS:
        extra_html = builder(run)
        if extra_html:
            sections.append(extra_html)

    # Skipped
    if run.skipped:
        rows_html = "".join(
            f"<tr><td class='path'>{_esc(s.get('path', ''))}</td><td class='path'>{_esc(s.get('reason', ''))}</td>"
            f"<td>{_esc(s.get('stage', ''))}</td></tr>"
            for s in run.skipped[:MAX_TABLE_ROWS]
        )
        more = (
            f"<p class='note'>First {MAX_TABLE_ROWS} of {len(run.skipped):,}; all in skipped.csv.</p>"
            if len(run.skipped) > MAX_TABLE_ROWS
            else ""
        )
        sections.append(
            f'<section id="skipped"><h2>Skipped files ({len(run.skipped):,})</h2>{more}'
            f"<div class='scroll'><table><tr><th class='path'>path</th><th class='path'>reason</th>"
            f"<th>stage</th></tr>{rows_html}</table></div></section>"
        )
        nav.append(("skipped", "Skipped"))

    nav_html = "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in nav)
    source = (run.config.get("input") or {}).get("source", "")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>rayclust report - {_esc(name)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>rayclust run {_esc(name)}</h1><p>{_esc(source)}</p></header>"
        f"<nav>{nav_html}</nav><main>{''.join(sections)}</main><script>{_JS}</script></body></html>"
    )


def write_report(
    run_dir: str | Path,
    *,
    max_thumbnails_per_cluster: int = 12,
    max_clusters_shown: int = 50,
    max_map_points: int = 4000,
    map_method: str = "auto",
    n_neighbors: int = 10,
    duplicate_distance: float = 0.02,
    max_knn_rows: int = 20_000,
    features: np.ndarray | None = None,
    log_to_mlflow: bool = True,
    seed: int = 0,
) -> Path:
    """Write report.html, near_duplicates.csv and outliers.csv into `run_dir`; return the page.

    Near-duplicates are kNN pairs within `duplicate_distance` (cosine) joined into groups;
    outliers are scored by their mean cosine distance to `n_neighbors` neighbours. Both come
    from an exact kNN graph over at most `max_knn_rows` rows (a sample spread over clusters
    on larger runs, so there the lists cover the sample only).

    features: the rows of assignments.csv, in order; None loads them from the run's
    FeatureStore (the map and kNN lists are left out when the store does not have them).
    log_to_mlflow: also attach the three files to the run's MLflow run (from mlflow.json).
    """
    if max_thumbnails_per_cluster < 1:
        raise ValueError(f"max_thumbnails_per_cluster={max_thumbnails_per_cluster} should be >= 1")
    if max_map_points < 2:
        raise ValueError(f"max_map_points={max_map_points} should be >= 2")
    if max_knn_rows < 2:
        raise ValueError(f"max_knn_rows={max_knn_rows} should be >= 2")
    run = read_run_folder(run_dir)
    if features is None:
        features = load_run_features(run)
    elif len(features) != len(run.paths):
        raise ReportError(
            f"features has {len(features)} rows but assignments.csv has {len(run.paths)}"
        )
    else:
        features = _l2_normalize(np.asarray(features, dtype=np.float32))

    neighbours = None
    outputs = []
    if features is not None:
        # An exact kNN graph is quadratic: past max_knn_rows it covers a sample spread over
        # the clusters (100k rows exact took minutes on 2 shared cores; HNSW or IVF too).
        knn_rows = _sample_per_cluster(run.clusters, max_knn_rows, np.random.default_rng(seed))
        neighbours = find_neighbour_lists(
            features[knn_rows],
            n_neighbors=n_neighbors,
            duplicate_distance=duplicate_distance,
            random_state=seed,
        ).mapped(knn_rows)
        _write_rows(
            run.run_dir / "near_duplicates.csv",
            ["group", "path"],
            [[g, run.paths[r]] for g, group in enumerate(neighbours.groups) for r in group],
        )
        _write_rows(
            run.run_dir / "outliers.csv",
            ["path", "score"],
            [
                [run.paths[r], f"{s:.6f}"]
                for r, s in zip(neighbours.outlier_rows, neighbours.outlier_scores, strict=True)
            ],
        )
        outputs += [run.run_dir / "near_duplicates.csv", run.run_dir / "outliers.csv"]

    page = build_report_html(
        run,
        features,
        max_thumbnails_per_cluster=max_thumbnails_per_cluster,
        max_clusters_shown=max_clusters_shown,
        max_map_points=max_map_points,
        map_method=map_method,
        neighbours=neighbours,
        seed=seed,
    )
    out = run.run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    outputs.insert(0, out)
    if len(page.encode()) > PAGE_BOUND_BYTES:
        log.warning(
            "report: %s is %d bytes, over the %d-byte bound",
            out,
            len(page.encode()),
            PAGE_BOUND_BYTES,
        )
    if log_to_mlflow and run.mlflow.get("run_id"):
        _log_to_mlflow(run.mlflow, outputs)
    return out


def _log_to_mlflow(info: dict[str, Any], files: list[Path]) -> None:
    from rayclust.tracking import _open_client, _with_retry

    try:
        client = _open_client(info["tracking_uri"])
        for path in files:
            _with_retry(client.log_artifact, info["run_id"], str(path))
    except Exception as exc:  # the report on disk is the product; MLflow is a copy
        log.warning("report: could not attach to MLflow run %s (%s)", info.get("run_id"), exc)


def main(argv: Sequence[str] | None = None) -> int:
    """``rayclust report RUN_DIR``: write the run's report.html and print its path."""
    parser = argparse.ArgumentParser(prog="rayclust report", description=main.__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--max-thumbnails-per-cluster", type=int, default=12)
    parser.add_argument("--max-clusters-shown", type=int, default=50)
    parser.add_argument("--max-map-points", type=int, default=4000)
    parser.add_argument(
        "--map", dest="map_method", default="auto", choices=["auto", "umap", "tsne", "pca"]
    )
    parser.add_argument("--duplicate-distance", type=float, default=0.02)
    parser.add_argument("--max-knn-rows", type=int, default=20_000)
    parser.add_argument("--no-mlflow", action="store_true", help="do not attach to the MLflow run")
    args = parser.parse_args(argv)
    try:
        out = write_report(
            args.run_dir,
            max_thumbnails_per_cluster=args.max_thumbnails_per_cluster,
            max_clusters_shown=args.max_clusters_shown,
            max_map_points=args.max_map_points,
            map_method=args.map_method,
            duplicate_distance=args.duplicate_distance,
            max_knn_rows=args.max_knn_rows,
            log_to_mlflow=not args.no_mlflow,
        )
    except (ReportError, ValueError) as exc:
        print(f"rayclust report: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
