"""The image sections of the report: the map, the clusters with every member, duplicates,
possibly mislabelled images, outliers and image quality, as plain data for the templates.

Thumbnails are inlined once each, in the page's data block (``PageData``), and referred to
by number wherever an image is shown; the page's script puts them in place. Which images
get one is budgeted (``MAX_THUMBS``), most telling first: cluster exemplars, the listed
duplicates, mislabelled images, outliers and quality extremes, then map points and cluster
members. Past the budget an image is shown by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayclust.report.analysis import (
    cluster_exemplars,
    covered_rows,
    project_2d,
    sample_per_cluster,
)
from rayclust.report.neighbours import NeighbourLists
from rayclust.report.quality import MAX_QUALITY_IMAGES, figures
from rayclust.report.thumbnails import ThumbnailCache
from rayclust.runs import RunFolder

MAX_THUMBS = 800  # x MAX_THUMB_BYTES (4,000 base64 characters): 3.2 MB
MAX_LISTED = 10_000  # cluster members listed by name (a bigger run: assignments.csv)
MEMBERS_PER_PAGE = 24
MAX_GROUPS_SHOWN = 20  # duplicate groups, each with up to GROUP_THUMBS images
GROUP_THUMBS = 8
N_LISTED = 24  # outliers and possibly mislabelled images shown
MAP_WIDTH, MAP_HEIGHT, MAP_PAD = 720, 480, 12
# Names in the data block are cut to these lengths so that 10,000 listed images cost at most
# ~1.6 MB whatever the paths: a path keeps its end (the file name), a label its start.
MAX_PATH_CHARS, MAX_LABEL_CHARS = 100, 32


def short_path(path: str) -> str:
    return path if len(path) <= MAX_PATH_CHARS else "..." + path[-(MAX_PATH_CHARS - 3) :]


def short_label(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 3] + "..."


@dataclass
class PageData:
    """The page's data block: images by item number, thumbnails by number."""

    run: RunFolder
    cache: ThumbnailCache
    thumbs: list[str] = field(default_factory=list)
    items: list[list[Any]] = field(default_factory=list)  # [path, cluster, label, thumb]
    _item_of: dict[int, int] = field(default_factory=dict)
    _thumb_of: dict[str, int] = field(default_factory=dict)

    def item(self, row: int, thumb: bool = True) -> int:
        """The item number of a row, giving it a thumbnail while the budget lasts."""
        if row not in self._item_of:
            run = self.run
            self._item_of[row] = len(self.items)
            path, label = short_path(run.paths[row]), short_label(run.labels[row])
            self.items.append([path, int(run.clusters[row]), label, -1])
        number = self._item_of[row]
        if thumb and self.items[number][3] == -1:
            self.items[number][3] = self._thumb(row)
        return number

    def _thumb(self, row: int) -> int:
        image_id = self.run.image_ids[row]
        if image_id in self._thumb_of:
            return self._thumb_of[image_id]
        if len(self.thumbs) >= MAX_THUMBS:
            return -1
        uri = self.cache.uri(self.run.paths[row], image_id)
        if uri is None:
            return -2  # unreadable
        self._thumb_of[image_id] = len(self.thumbs)
        self.thumbs.append(uri)
        return self._thumb_of[image_id]

    def shown(self, row: int, caption: str = "") -> dict[str, Any]:
        """A thumbnail in a grid: the item and its caption."""
        return {"item": self.item(row), "caption": caption}

    def block(self) -> dict[str, Any]:
        return {"thumbs": self.thumbs, "items": self.items}


def map_section(
    data: PageData,
    features: np.ndarray | None,
    max_points: int,
    method: str,
    seed: int,
    why_missing: str,
    feature_rows: np.ndarray | None = None,
) -> dict[str, Any]:
    run = data.run
    if features is None or len(features) < 2:
        return {"missing": f"No map: {why_missing or 'fewer than two images'}."}
    covered = covered_rows(feature_rows, len(run.paths))
    picked = sample_per_cluster(run.clusters[covered], max_points, np.random.default_rng(seed))
    rows = covered[picked]
    coords, used = project_2d(features[picked], method, seed)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    xy = (coords - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    xs = MAP_PAD + xy[:, 0] * (MAP_WIDTH - 2 * MAP_PAD)
    ys = MAP_HEIGHT - MAP_PAD - xy[:, 1] * (MAP_HEIGHT - 2 * MAP_PAD)
    n = len(run.paths)
    return {
        "missing": "",
        "method": used,
        "sampled": f"{len(rows):,} of {n:,} images" if len(rows) < n else f"all {n:,} images",
        "points": [
            [round(float(x), 1), round(float(y), 1), r]
            for x, y, r in zip(xs, ys, rows, strict=True)
        ],
        "width": MAP_WIDTH,
        "height": MAP_HEIGHT,
        "radius": 4 if len(rows) <= 2000 else 2.5,
    }


def finish_map(data: PageData, section: dict[str, Any]) -> None:
    """Map points become items once the more telling images have taken their thumbnails."""
    if section.get("points"):
        section["points"] = [[x, y, data.item(int(r))] for x, y, r in section["points"]]


def clusters_section(
    data: PageData,
    features: np.ndarray | None,
    max_thumbnails: int,
    max_shown: int,
    majority: dict[int, tuple[str, float]],
    feature_rows: np.ndarray | None = None,
) -> dict[str, Any]:
    run = data.run
    cluster_ids, sizes = np.unique(run.clusters, return_counts=True)
    covered = covered_rows(feature_rows, len(run.paths))
    covered_clusters = run.clusters[covered]
    shown = np.argsort(-sizes, kind="stable")[:max_shown]
    n_far = max_thumbnails // 3
    blocks = []
    budget = MAX_LISTED
    for i in shown:
        c = int(cluster_ids[i])
        members = np.flatnonzero(run.clusters == c)
        if features is not None and np.any(covered_clusters == c):
            central, far = (
                covered[r]
                for r in cluster_exemplars(
                    features, covered_clusters, c, max_thumbnails - n_far, n_far
                )
            )
            order = covered[cluster_exemplars(features, covered_clusters, c, len(members), 0)[0]]
            # Members outside a sample of the rows follow those it ranked.
            order = np.concatenate([order, members[~np.isin(members, order)]])
        else:
            central, far, order = members[:max_thumbnails], members[:0], members
        top = ""
        if c in majority:
            label, share = majority[c]
            top = f" - mostly {label} ({share:.0%})"
        blocks.append(
            {
                "c": c,
                "size": f"{sizes[i]:,}",
                "top": top,
                "central": [data.shown(r) for r in central],
                "far": [data.shown(r, "far from centre") for r in far],
                "order": order[: max(budget, 0)],
            }
        )
        budget -= len(order)
    more = ""
    if len(cluster_ids) > len(shown):
        more = f"The {len(shown)} largest of {len(cluster_ids)} clusters."
    return {"more": more, "blocks": blocks, "has_features": features is not None}


def finish_clusters(data: PageData, section: dict[str, Any]) -> None:
    """Member lists (nearest the centre first) once every other image has its thumbnail."""
    listed = 0
    for block in section["blocks"]:
        block["members"] = [data.item(int(r)) for r in block.pop("order")]
        listed += len(block["members"])
        block["unlisted"] = int(block["size"].replace(",", "")) - len(block["members"])
    section["per_page"] = MEMBERS_PER_PAGE


def neighbour_sections(data: PageData, neighbours: NeighbourLists) -> dict[str, Any]:
    run = data.run
    n = len(run.paths)
    scope = neighbours.scope
    if not scope and neighbours.n_searched < n:
        scope = (
            f" Searched a sample of {neighbours.n_searched:,} of {n:,} images spread over "
            "the clusters."
        )
    exact = [g for g in neighbours.groups if g.kind == "exact"]
    near = [g for g in neighbours.groups if g.kind == "near"]

    def groups(found: list, start: int) -> list[dict[str, Any]]:
        return [
            {
                "index": start + index,
                "size": len(g.rows),
                "thumbs": [
                    data.shown(int(r), "same file" if g.kind == "exact" else f"{d:.2g}")
                    for r, d in zip(g.rows[:GROUP_THUMBS], g.distances[:GROUP_THUMBS], strict=True)
                ],
                "extra": max(len(g.rows) - GROUP_THUMBS, 0),
            }
            for index, g in enumerate(found[:MAX_GROUPS_SHOWN])
        ]

    mislabelled = [
        {
            **data.shown(m["row"], f"{m['agree']:.0%} agree"),
            "name": Path(run.paths[m["row"]]).name,
            "label": m["label"],
            "cluster": int(run.clusters[m["row"]]),
            "cluster_label": m["cluster_label"],
            "neighbour_label": m["neighbour_label"],
        }
        for m in neighbours.mislabelled[:N_LISTED]
    ]
    n_show = min(N_LISTED, len(neighbours.outlier_rows))
    return {
        "scope": scope,
        "threshold": neighbours.threshold_why,
        "n_exact": (len(exact), sum(len(g.rows) for g in exact)),
        "n_near": (len(near), sum(len(g.rows) for g in near)),
        "exact": groups(exact, 0),
        "near": groups(near, len(exact)),
        "mislabelled": mislabelled,
        "n_mislabelled": len(neighbours.mislabelled),
        "outliers": [
            data.shown(int(r), f"{s:.3f}")
            for r, s in zip(
                neighbours.outlier_rows[:n_show], neighbours.outlier_scores[:n_show], strict=True
            )
        ],
    }


def quality_section(data: PageData, seed: int) -> tuple[dict[str, Any], list[list[Any]]]:
    """Histograms of size, blur and brightness with the images at both ends, and the CSV
    rows (path, width, height, blur, brightness) of every measured image."""
    run = data.run
    first: dict[str, int] = {}
    for row, image_id in enumerate(run.image_ids):
        first.setdefault(image_id, row)
    unique = np.array(sorted(first.values()), dtype=np.int64)
    picked = sample_per_cluster(
        run.clusters[unique], MAX_QUALITY_IMAGES, np.random.default_rng(seed)
    )
    rows, measured = [], []
    for r in unique[picked]:
        q = data.cache.figures(run.paths[r], run.image_ids[r])
        if q is not None:
            rows.append(int(r))
            measured.append(q)
    found = figures(measured)
    out = []
    for f in found:
        top = max(int(f.counts.max()), 1)
        fmt = "{:.3g}"
        out.append(
            {
                "name": f.name,
                "bars": [
                    {"h": round(60 * c / top, 1), "n": int(c), "x": i * 12}
                    for i, c in enumerate(f.counts)
                ],
                "range": (fmt.format(f.values.min()), fmt.format(f.values.max())),
                "low_name": f.low_name,
                "high_name": f.high_name,
                "low": [data.shown(rows[i], fmt.format(f.values[i])) for i in f.low],
                "high": [data.shown(rows[i], fmt.format(f.values[i])) for i in f.high],
            }
        )
    csv_rows = [
        [run.paths[r], q.width, q.height, f"{q.blur:.2f}", f"{q.brightness:.4f}"]
        for r, q in zip(rows, measured, strict=True)
    ]
    n_unique = len(unique)
    scope = (
        f"{len(rows):,} images"
        if len(picked) == n_unique
        else f"a sample of {len(rows):,} of {n_unique:,} distinct images"
    )
    return {"scope": scope, "figures": out}, csv_rows
