"""Run report: built from fake but real-image run folders (generated features, no Ray)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rayclust import report
from rayclust.images import content_id
from rayclust.report.sections import short_path

VIEW = "pixels16"
LABEL_TO_CLUSTER = [3, 0, 4, 1, 2]  # cluster ids that differ from the label order
DIM = 16


def _sample_images(sample_dir: Path, per_label: int) -> list[tuple[Path, str]]:
    images = []
    for folder in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
        images += [(p, folder.name) for p in sorted(folder.glob("*.png"))[:per_label]]
    return images


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def make_run_folder(
    tmp_path: Path, sample_dir: Path, per_label: int = 6, store_features: bool = True
) -> dict:
    """A run folder over real images: labelled clusters with two mistakes, one exact copy of
    an image (an exact duplicate pair), one image whose features point away from everything
    (the outlier), one image given another label than its own (possibly mislabelled), a
    skipped file, a two-row metrics table and a DivClust NMI matrix."""
    rng = np.random.default_rng(42)
    images = _sample_images(sample_dir, per_label)
    label_names = sorted({label for _, label in images})
    copy = tmp_path / "copy_of_first.png"
    shutil.copyfile(images[0][0], copy)
    images.append((copy, images[0][1]))
    ids = [content_id(p.read_bytes()) for p, _ in images]

    centres = rng.normal(size=(len(label_names), DIM))
    feats_by_id: dict[str, np.ndarray] = {}
    for image_id, (_, label) in zip(ids, images, strict=True):
        if image_id not in feats_by_id:  # the copy shares the original's features
            centre = centres[label_names.index(label)]
            feats_by_id[image_id] = centre + 0.5 * rng.normal(size=DIM)
    outlier_row = 3
    feats_by_id[ids[outlier_row]] = -centres.sum(axis=0) * 3
    features = np.stack([feats_by_id[i] for i in ids]).astype(np.float32)

    clusters = [LABEL_TO_CLUSTER[label_names.index(label)] for _, label in images]
    clusters[1], clusters[per_label + 1] = clusters[per_label + 1], clusters[1]
    labels = [label for _, label in images]
    planted = 2 * per_label + 2  # its features and cluster stay with its own label
    labels[planted] = label_names[(label_names.index(labels[planted]) + 1) % len(label_names)]

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cache_dir = tmp_path / "cache"
    from rayclust.views import FeatureStore, get_view_spec

    view_key = get_view_spec(VIEW).key()
    if store_features:
        store = FeatureStore(cache_dir, view_key, dim=DIM)
        unique = list(feats_by_id)
        store.write(unique, np.stack([feats_by_id[i] for i in unique]).astype(np.float32))
    config = {
        "name": "report-test",
        "views": [VIEW],
        "input": {"source": str(sample_dir), "labels_from_folders": True},
        "extraction": {"cache_dir": str(cache_dir) if store_features else None},
        "clustering": {"algorithm": "kmeans"},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        [str(p), i, c, label]
        for (p, _), i, c, label in zip(images, ids, clusters, labels, strict=True)
    ]
    _write_csv(run_dir / "assignments.csv", ["path", "image_id", "cluster", "label"], rows)
    _write_csv(
        run_dir / "skipped.csv",
        ["path", "reason", "stage"],
        [["/data/broken.png", "truncated PNG: image file is truncated", "decode"]],
    )
    summary = {"acc": {"mean": 0.9, "std": 0.01, "n": 2}, "nmi": {"mean": 0.8, "std": 0.02, "n": 2}}
    metrics = {
        "n_images": len(rows),
        "n_skipped": 1,
        "algorithm": "kmeans",
        "backend": "faiss",
        "views": [VIEW],
        "view_keys": {VIEW: view_key},  # the cache keys the report reads the features by
        "primary": "consensus:bipartite",
        "summary": summary,
        "table": {f"view:{VIEW}": summary, "consensus:bipartite": summary},
        "view_weights": {VIEW: 1.0},
        "divclust": {"inter_head_nmi": [[1.0, 0.7, 0.5], [0.7, 1.0, 0.6], [0.5, 0.6, 1.0]]},
        "timings": {"scan_s": 0.1, "extract_s": 2.0},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return {
        "run_dir": run_dir,
        "paths": [str(p) for p, _ in images],
        "labels": labels,
        "clusters": np.array(clusters),
        "features": features,
        "copy": str(copy),
        "original": str(images[0][0]),
        "outlier": str(images[outlier_row][0]),
        "planted": str(images[planted][0]),
    }


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def page_data(text: str) -> dict:
    """The page's data block (thumbnails, items, map points, cluster members)."""
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text)
    assert found, "no data block in the page"
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def built_run(tmp_path_factory, sample_dir) -> dict:
    run = make_run_folder(tmp_path_factory.mktemp("report"), sample_dir)
    run["page"] = report.write_report(run["run_dir"], log_to_mlflow=False)
    return run


def test_report_lists_duplicates_and_outliers_from_the_feature_store(built_run):
    run_dir = built_run["run_dir"]
    groups = _read_rows(run_dir / "near_duplicates.csv")
    assert sorted(r["path"] for r in groups) == sorted([built_run["original"], built_run["copy"]])
    assert {(r["group"], r["kind"], r["distance"]) for r in groups} == {("0", "exact", "0.000000")}
    outliers = _read_rows(run_dir / "outliers.csv")
    assert len(outliers) == len(built_run["paths"]) - 1  # the byte copy scored once
    assert outliers[0]["path"] == built_run["outlier"]
    scores = [float(r["score"]) for r in outliers]
    assert scores == sorted(scores, reverse=True)
    # Only the planted label is doubted: the two misclustered images agree with their
    # neighbours, so the clustering is wrong there, not the label.
    mislabelled = _read_rows(run_dir / "mislabelled.csv")
    assert [r["path"] for r in mislabelled] == [built_run["planted"]]
    quality = _read_rows(run_dir / "image_quality.csv")
    assert len(quality) == len(set(built_run["paths"])) - 1  # the byte copy measured once
    assert all(int(r["width"]) > 0 and float(r["blur"]) >= 0 for r in quality)


def test_report_page_is_self_contained_and_has_every_section(built_run):
    page = built_run["page"].read_text()
    assert f'content="{report.CSP}"' in page
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", page, re.IGNORECASE)
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    n = len(built_run["paths"])
    data = page_data(page)
    assert len(data["map"]["points"]) == n  # small run: every image on the map
    assert data["map"]["method"] == "t-SNE"
    # Every image has its thumbnail, inlined once (the byte copy shares the original's).
    assert len(data["thumbs"]) == n - 1
    assert all(t.startswith("data:image/jpeg;base64,") for t in data["thumbs"])
    assert sorted(m for members in data["members"].values() for m in members) == list(range(n))
    listed = sorted(item[0] for item in data["items"])
    assert listed == sorted(short_path(p) for p in built_run["paths"])
    sections = ("summary", "map-section", "confusion", "clusters", "duplicates", "mislabelled")
    for section in (*sections, "outliers", "quality"):
        assert f'id="{section}"' in page
    assert "outlier" not in page.split('id="outliers"')[0].split('id="map-section"')[1]
    assert "inter_head_nmi" in page and "0.70" in page
    assert "truncated PNG: image file is truncated" in page
    assert "ACC AVG(SD)" in page and "0.900 (0.010)" in page


def test_confusion_counts_match_a_plain_count(built_run):
    from sklearn.metrics.cluster import contingency_matrix

    counts, names, cluster_ids = report.confusion_counts(built_run["labels"], built_run["clusters"])
    assert names == sorted(set(built_run["labels"]))
    assert list(cluster_ids) == sorted(set(built_run["clusters"].tolist()))
    np.testing.assert_array_equal(
        counts, contingency_matrix(built_run["labels"], built_run["clusters"])
    )
    assert counts.sum() == len(built_run["paths"])
    assert np.trace(counts[:, LABEL_TO_CLUSTER]) == len(built_run["paths"]) - 3


def test_thumbnails_stay_within_their_byte_cap():
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    img = Image.fromarray(noise)
    data = report.jpeg_within(img, quality=95)
    assert len(data) <= report.MAX_THUMB_BYTES
    first = io.BytesIO()
    img.save(first, format="JPEG", quality=95)
    assert len(first.getvalue()) > report.MAX_THUMB_BYTES  # the cap had work to do
    assert Image.open(io.BytesIO(data)).size[0] >= 16


def test_report_without_features_still_shows_clusters(tmp_path, sample_dir):
    run = make_run_folder(tmp_path, sample_dir, per_label=3, store_features=False)
    page = report.write_report(run["run_dir"], log_to_mlflow=False).read_text()
    assert 'id="clusters"' in page and 'id="confusion"' in page
    assert 'id="map"' not in page and "No map:" in page
    assert not (run["run_dir"] / "outliers.csv").exists()


def test_features_argument_and_parameter_errors(tmp_path, sample_dir):
    run = make_run_folder(tmp_path, sample_dir, per_label=2, store_features=False)
    with pytest.raises(report.ReportError, match="assignments.csv is missing"):
        report.write_report(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="max_thumbnails_per_cluster=0 should be >= 1"):
        report.write_report(run["run_dir"], max_thumbnails_per_cluster=0)
    with pytest.raises(ValueError, match="map_method='umap' should be one of tsne, pca"):
        report.write_report(run["run_dir"], map_method="umap")
    with pytest.raises(ValueError, match=r"duplicate_distance=-0.1 should be in \[0, 2\)"):
        report.write_report(run["run_dir"], duplicate_distance=-0.1)
    with pytest.raises(report.ReportError, match="features has 3 rows but assignments.csv has"):
        report.write_report(run["run_dir"], features=run["features"][:3], log_to_mlflow=False)
    page = report.write_report(
        run["run_dir"], features=run["features"], max_map_points=4, log_to_mlflow=False
    ).read_text()
    # The bound holds, and the sample is spread over clusters instead of taking the first rows.
    data = page_data(page)
    points = data["map"]["points"]
    assert len(points) == 4
    assert len({data["items"][item][1] for _, _, item in points}) == 4


def test_main_writes_the_page_and_reports_a_bad_folder(tmp_path, sample_dir, capsys):
    run = make_run_folder(tmp_path, sample_dir, per_label=2)
    assert report.main([str(run["run_dir"]), "--no-mlflow"]) == 0
    assert capsys.readouterr().out.strip() == str(run["run_dir"] / "report.html")
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "assignments.csv is missing" in capsys.readouterr().err
    assert report.main([str(run["run_dir"]), "--duplicate-distance", "3", "--no-mlflow"]) == 2
    assert "duplicate_distance=3.0 should be in [0, 2)" in capsys.readouterr().err
    assert report.main([str(run["run_dir"]), "--map", "pca", "--no-mlflow"]) == 0
    assert "PCA of the clustered features" in (run["run_dir"] / "report.html").read_text()


def test_report_is_attached_to_the_mlflow_run(tmp_path, sample_dir):
    from rayclust import runs, tracking

    run = make_run_folder(tmp_path, sample_dir, per_label=2)
    uri = tracking.default_tracking_uri(tmp_path)
    with tracking.start_run({"x": 1}, uri=uri, experiment="report-test") as mlrun:
        run_id = mlrun.run_id
    # The pointer as the run record writes it: tied to the folder's files (a hand-written
    # one is not trusted, tests/test_run_record_trust.py).
    runs.write_mlflow_pointer(run["run_dir"], uri, run_id)
    report.write_report(run["run_dir"])
    client = tracking.open_client(uri)
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "near_duplicates.csv", "outliers.csv"} <= names


def test_report_of_a_100k_run_stays_under_the_bound(tmp_path, sample_dir):
    """100,000 rows over the 120 real sample images repeated, 200 clusters, features from
    blobs: the page stays under PAGE_BOUND_BYTES and the lists cover every row."""
    images = sorted(sample_dir.rglob("*.png"))
    n, k, dim = 100_000, 200, 32
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, k, n)
    features = (rng.normal(size=(k, dim)) * 3)[clusters] + rng.normal(size=(n, dim))
    ids = {p: content_id(p.read_bytes()) for p in images}
    rows = []
    for row in range(n):
        path = images[row % len(images)]
        rows.append([str(path), ids[path], int(clusters[row]), path.parent.name])
    run_dir = tmp_path / "big"
    run_dir.mkdir()
    _write_csv(run_dir / "assignments.csv", ["path", "image_id", "cluster", "label"], rows)
    (run_dir / "metrics.json").write_text(json.dumps({"n_images": n}))

    start = time.perf_counter()
    page = report.write_report(run_dir, features=features, map_method="pca", log_to_mlflow=False)
    seconds = time.perf_counter() - start
    size = page.stat().st_size
    print(f"100k-row report: {size / 1e6:.2f} MB in {seconds:.1f} s")
    assert size < report.PAGE_BOUND_BYTES
    data = page_data(page.read_text())
    assert len(data["map"]["points"]) == 2000
    assert len(data["thumbs"]) == len(images)  # 120 distinct images: one thumbnail each
    assert sum(len(m) for m in data["members"].values()) == 10_000  # the listing's bound
    # Rows of one content id are one image (their features are the same in a real run).
    assert len(_read_rows(run_dir / "outliers.csv")) == len(images)
    # The sample's 120 images repeated: exact duplicates, by content id.
    groups = _read_rows(run_dir / "near_duplicates.csv")
    assert {r["kind"] for r in groups} == {"exact"}


# --------------------------------------------------------------------------- in a real browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The browser's own clock check (clients2.google.com/time) is not the page's doing.
    "--disable-features=NetworkTimeServiceQuerying",
    "--hide-scrollbars",
]
PROBE_URL = "http://127.0.0.1:9/probe.png"

# Appended to a copy of the page: records CSP violations, then, once loaded, what the DOM
# holds and what using it does: hovering a map point, paging a cluster's members, widths.
# The probe image must be blocked by the page's CSP - proof that the check can fail.
CHECK_SCRIPT = f"""<script>
var violations = [];
document.addEventListener('securitypolicyviolation', function(e) {{
  violations.push(e.blockedURI); }});
function names(list) {{
  return Array.prototype.map.call(list.querySelectorAll('figcaption'),
    function(c) {{ return c.textContent; }}); }}
window.addEventListener('load', function() {{
  var probe = new Image(); probe.src = '{PROBE_URL}';
  setTimeout(function() {{
    var imgs = Array.prototype.slice.call(document.images).filter(function(i) {{
      return i.getAttribute('src'); }});
    var point = document.querySelector('#map circle'), box = point.getBoundingClientRect();
    point.dispatchEvent(new MouseEvent('mouseover', {{bubbles: true,
      clientX: box.left + 2, clientY: box.top + 2}}));
    var tip = document.getElementById('tip'), tipImg = tip.querySelector('img');
    var members = document.querySelector('details.members'); members.open = true;
    var grid = members.querySelector('.grid'), first = names(grid);
    var firstLabel = members.querySelector('.page').textContent;
    members.querySelector('.next').click();
    var second = names(grid);
    document.querySelector('#clusters figure.thumb').click();
    var lightbox = document.getElementById('lightbox');
    var enlarged = [lightbox.className, (lightbox.querySelector('img').getAttribute('src') || '')
      .slice(0, 23), lightbox.querySelector('img').getBoundingClientRect().width];
    function fills() {{
      var seen = {{}};
      document.querySelectorAll('#map circle').forEach(function(c) {{
        seen[c.getAttribute('fill')] = 1; }});
      return Object.keys(seen).length; }}
    var byCluster = fills();
    document.querySelector('.toggle button[data-by="label"]').click();
    var byLabel = [fills(), document.querySelector('#legend span').textContent];
    var wide = Array.prototype.filter.call(document.querySelectorAll('table'), function(t) {{
      var r = t.getBoundingClientRect(), box = t.parentElement.getBoundingClientRect();
      return r.width > 0 && r.right > box.right + 1 &&
        getComputedStyle(t.parentElement).overflowX !== 'auto'; }}).length;
    var out = document.createElement('pre'); out.id = 'check';
    out.textContent = JSON.stringify({{
      images: imgs.length,
      loaded: imgs.filter(function(i) {{ return i.complete && i.naturalWidth > 0; }}).length,
      resources: performance.getEntriesByType('resource').map(function(e) {{ return e.name; }}),
      violations: violations,
      mapPoints: document.querySelectorAll('#map circle').length,
      coloured: document.querySelectorAll('#map circle[fill]').length,
      tipShown: getComputedStyle(tip).display,
      tipImage: (tipImg.getAttribute('src') || '').slice(0, 23),
      tipLoaded: tipImg.complete && tipImg.naturalWidth > 0,
      tipText: tip.textContent,
      pageLabels: [firstLabel, members.querySelector('.page').textContent],
      pages: [first, second],
      enlarged: enlarged,
      colours: [byCluster, byLabel],
      confusionCells: document.querySelectorAll('table.confusion td').length,
      bodyScrollWidth: document.documentElement.scrollWidth,
      bodyClientWidth: document.documentElement.clientWidth,
      tablesOverflowing: wide,
      scrollHeight: document.body.scrollHeight
    }});
    document.body.appendChild(out);
    if (window.parent !== window) window.parent.postMessage(out.textContent, '*');
  }}, 500);
}});
</script></body>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium is not installed: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (CI={os.environ['CI']}: .ci/run installs it; a skip would hide it)")
    pytest.skip(message)


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for, from chromium's net log. The browser's own background calls
    (update checks, accounts) carry the initiator 'not an origin' and are left out."""
    text = net_log.read_text().rstrip()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log cut short at exit lacks its closing brackets
        log = json.loads(text.rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job
        and "url" in event.get("params", {})
        and event["params"].get("initiator") != "not an origin"
    ]


def _checked(binary: str, page_text: str, tmp_path: Path, name: str, *args: str) -> dict:
    """What CHECK_SCRIPT found in a copy of the page, as chromium rendered it."""
    checked = tmp_path / f"{name}.html"
    checked.write_text(page_text.replace("</body>", CHECK_SCRIPT, 1))
    result = _run_chromium(
        binary,
        tmp_path / f"profile-{name}",
        "--virtual-time-budget=5000",
        *args,
        "--dump-dom",
        checked.as_uri(),
    )
    found = re.search(r'<pre id="check">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"no check output; chromium said: {result.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_report_renders_in_headless_chromium(built_run, tmp_path):
    binary = _chromium()
    page = built_run["page"]
    # Four members a page, so the sample's clusters of six span two pages.
    text = page.read_text()
    assert '"perPage": 24' in text
    text = text.replace('"perPage": 24', '"perPage": 4', 1)
    net_log = tmp_path / "netlog.json"
    check = _checked(
        binary, text, tmp_path, "dom", "--window-size=1300,1600", f"--log-net-log={net_log}"
    )
    n = len(built_run["paths"])
    assert check["images"] >= 5 * 6
    assert check["loaded"] == check["images"]
    # data: URIs are no resource fetches; the blocked probe is listed, nothing else.
    assert [r for r in check["resources"] if r != PROBE_URL] == []
    assert check["violations"] == [PROBE_URL]
    assert check["mapPoints"] == check["coloured"] == n
    # Hovering a point shows its thumbnail and its name.
    assert check["tipShown"] == "block"
    assert check["tipImage"] == "data:image/jpeg;base64,"
    assert check["tipLoaded"]
    assert ".png - cluster " in check["tipText"]
    # A cluster's members page: four names, then the next ones.
    first, second = check["pages"]
    assert check["pageLabels"][0].startswith("page 1 of 2")
    assert check["pageLabels"][1].startswith("page 2 of 2")
    assert len(first) == 4 and second and not set(first) & set(second)
    assert all(name.endswith(".png") for name in first + second)
    # Clicking a thumbnail opens a larger view; the map recolours by label.
    assert check["enlarged"][:2] == ["on", "data:image/jpeg;base64,"]
    assert check["enlarged"][2] > 200
    first_label = sorted(built_run["labels"])[0]
    count = built_run["labels"].count(first_label)
    assert check["colours"] == [5, [5, f"{first_label} ({count})"]]
    assert check["confusionCells"] == 5 * 5
    assert check["tablesOverflowing"] == 0
    assert [u for u in _page_requests(net_log) if not u.startswith(("file:", "data:"))] == []
    # 400 px wide (in a frame: headless chromium keeps its window at least 500 px wide):
    # nothing sticks out of the page; wide tables scroll inside their own box.
    (tmp_path / "narrow.html").write_text(text.replace("</body>", CHECK_SCRIPT, 1))
    frame = tmp_path / "frame.html"
    frame.write_text(
        '<html><body><iframe src="narrow.html" style="width:400px;height:900px;border:0">'
        "</iframe><script>addEventListener('message', function(e) {"
        "var out = document.createElement('pre'); out.id = 'check';"
        "out.textContent = e.data; document.body.appendChild(out); });</script></body></html>"
    )
    result = _run_chromium(
        binary,
        tmp_path / "profile-narrow",
        "--virtual-time-budget=5000",
        "--allow-file-access-from-files",
        "--dump-dom",
        frame.as_uri(),
    )
    found = re.search(r'<pre id="check">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"no check output from the frame; chromium said: {result.stderr[-2000:]}"
    narrow = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert narrow["bodyClientWidth"] == 400
    assert narrow["bodyScrollWidth"] <= narrow["bodyClientWidth"]
    assert narrow["tablesOverflowing"] == 0
    assert narrow["tipShown"] == "block" and narrow["pageLabels"][1].startswith("page 2 of 2")
    # Control: a page without the CSP does reach the network, and the net log shows it.
    leaky = tmp_path / "leaky.html"
    leaky.write_text(f'<html><body><img src="{PROBE_URL}"></body></html>')
    leaky_log = tmp_path / "leaky-netlog.json"
    _run_chromium(
        binary,
        tmp_path / "profile-leaky",
        "--virtual-time-budget=3000",
        f"--log-net-log={leaky_log}",
        "--dump-dom",
        leaky.as_uri(),
    )
    assert PROBE_URL in _page_requests(leaky_log)

    for width in (1300, 400):
        shot = tmp_path / f"report-{width}.png"
        _run_chromium(
            binary,
            tmp_path / f"profile-shot-{width}",
            f"--window-size={width},1600",
            "--virtual-time-budget=3000",
            f"--screenshot={shot}",
            page.as_uri(),
        )
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[:2] == (1600, width)
        assert (pixels[:40] < 40).all(axis=2).mean() > 0.5  # the dark header band rendered
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # images, not blank
        # The map's points are drawn: its cluster colours fill many pixels.
        colourful = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 80
        assert colourful.sum() > 2000


def test_missing_chromium_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        _chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _chromium()
