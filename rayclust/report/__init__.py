"""One self-contained HTML page per run: scores, clusters as thumbnails, a 2-D map, and more.

``write_report(run_dir)`` reads a finished run folder (``rayclust.runs``), gets the features
that were clustered (handed over by the pipeline, or loaded from the FeatureStore by the
cache keys in metrics.json) and writes beside the other outputs:

- ``report.html``: no network at all (a CSP meta tag forbids it); CSS, JS and SVG are inline
  and thumbnails are base64 JPEG data URIs; at most ``PAGE_BOUND_BYTES`` for any run size
  (see ``rayclust.report.html``; tests/test_report.py checks a 100,000-row run).
- ``near_duplicates.csv`` (group,kind,path,distance), ``outliers.csv`` (path,score) and
  ``mislabelled.csv`` (labelled runs), from a kNN graph over the features (cosine distance);
  ``image_quality.csv`` (path,width,height,blur,brightness).

Modules: ``analysis`` (features, exemplars, t-SNE/PCA map, confusion, score tables), ``neighbours``
(exact and near duplicates, outliers, possibly mislabelled images: one kNN graph),
``quality`` (size, blur, brightness), ``sections`` (the image sections as plain data),
``html`` (the page from ``templates/``), ``thumbnails``, ``writer`` (write_report), ``cli``.
"""

from rayclust.report.analysis import (
    ReportError,
    cluster_exemplars,
    confusion_counts,
    load_run_features,
    project_2d,
)
from rayclust.report.cli import main, register
from rayclust.report.html import (
    CSP,
    MAX_MATRIX_SIDE,
    MAX_TABLE_ROWS,
    PAGE_BOUND_BYTES,
    build_report_html,
    heatmap_table,
    register_section,
)
from rayclust.report.neighbours import (
    NEAR_DUPLICATE_RATIO,
    Group,
    NeighbourLists,
    find_neighbour_lists,
    near_duplicate_threshold,
    possibly_mislabelled,
)
from rayclust.report.thumbnails import MAX_THUMB_BYTES, THUMB_PX, ThumbnailCache, jpeg_within
from rayclust.report.writer import write_report
from rayclust.runs import RunFolder, read_run

__all__ = [
    "CSP",
    "MAX_MATRIX_SIDE",
    "MAX_TABLE_ROWS",
    "MAX_THUMB_BYTES",
    "NEAR_DUPLICATE_RATIO",
    "PAGE_BOUND_BYTES",
    "THUMB_PX",
    "Group",
    "NeighbourLists",
    "ReportError",
    "RunFolder",
    "ThumbnailCache",
    "build_report_html",
    "cluster_exemplars",
    "confusion_counts",
    "find_neighbour_lists",
    "heatmap_table",
    "jpeg_within",
    "load_run_features",
    "main",
    "near_duplicate_threshold",
    "possibly_mislabelled",
    "project_2d",
    "read_run",
    "register",
    "register_section",
    "write_report",
]
