"""The driver's columns of a worker scan (ImageTable): the same images, order and labels an
ImageSet gives, non-UTF-8 names kept, and a bounded cost per image while the parts are read
back (the ImageRecord-per-image read back this replaced costs several times the bound)."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest

from rayclust.cluster.distributed import split_ids
from rayclust.images import ImageRecord, ImageTable, LabelColumn, ScanParts, StringColumn
from rayclust.reduce import encode_labels
from rayclust.report.neighbours import exact_groups

# Bytes the read back may allocate at its peak per image of 40-character paths and 32-hex
# ids: the sort of the listing order (8 B an image and its transients) and one part's rows at
# a time; ~57 B measured at 40,000 images. The columns themselves are files, memory-mapped.
# Read back into memory (ImageTable in RAM): ~190 B; as an ImageRecord per image: ~570 B kept.
READ_BACK_PEAK_PER_IMAGE = 100
HELD_PER_IMAGE = 2  # what the driver keeps allocated per image once the table is built


def _rows(n: int, rng: np.random.Generator) -> list[tuple[int, str, str, str | None]]:
    labels = ["beetle", "moth", "fly"]
    return [
        (order, f"s3://traps/site-{order % 7}/{order:09d}.png", f"{order * 7919:032x}",
         labels[order % 3])
        for order in rng.permutation(n).tolist()
    ]  # fmt: skip


def test_the_table_reads_as_the_records_sorted_by_listing_order():
    rows = _rows(500, np.random.default_rng(0))
    table = ImageTable.from_rows(rows)
    expected = [ImageRecord(p, i, lab) for _, p, i, lab in sorted(rows)]
    assert table.records == expected
    assert list(table.paths) == [r.path for r in expected]
    assert (
        table.image_ids[17] == expected[17].image_id
        and table.image_ids[-1] == expected[-1].image_id
    )
    assert table.label_names == ["beetle", "fly", "moth"] and table.has_labels
    names = table.label_names
    assert [names[c] for c in table.label_codes()] == [r.label for r in expected]
    codes, encoded_names = encode_labels(table.labels)
    assert encoded_names == names
    assert np.array_equal(codes, encode_labels([r.label for r in expected])[0])


def test_unlabelled_images_and_names_that_are_not_utf8():
    name = "caf\udce9.png"  # a Latin-1 byte, as os.fsdecode gives it
    table = ImageTable.from_rows([(1, "b.png", "id-b", "x"), (0, name, "id-a", None)])
    assert table.records == [ImageRecord(name, "id-a", None), ImageRecord("b.png", "id-b", "x")]
    assert not table.has_labels and table.label_codes().tolist() == [-1, 0]
    assert encode_labels(table.labels) == (None, [])


def test_a_shard_slice_pickles_its_own_rows_only():
    ids = StringColumn.from_strings(f"{i:032x}" for i in range(30_000))
    parts = split_ids(ids, 3)
    assert [len(p) for p in parts] == [10_000] * 3
    assert all(isinstance(p, StringColumn) for p in parts)
    assert list(pickle.loads(pickle.dumps(parts[1]))) == [
        f"{i:032x}" for i in range(10_000, 20_000)
    ]
    # 40 bytes an id (32 + an 8-byte offset): a third of the column, not the whole buffer
    assert len(pickle.dumps(parts[1])) < 10_000 * 40 + 1_000
    assert split_ids(["a", "b", "c"], 2) == [("a", "b"), ("c",)]  # lists still give tuples


def test_exact_groups_on_a_column_equal_those_on_a_list():
    ids = [f"{i % 50:032x}" if i % 3 == 0 else f"{1000 + i:032x}" for i in range(400)]
    by_list, by_column = exact_groups(ids), exact_groups(StringColumn.from_strings(ids))
    assert np.array_equal(by_list[0], by_column[0])
    assert [g.rows.tolist() for g in by_list[1]] == [g.rows.tolist() for g in by_column[1]]
    assert by_list[1] and all(len(set(ids[r] for r in g.rows)) == 1 for g in by_list[1])
    first_rows = {}
    for row, image_id in enumerate(ids):
        first_rows.setdefault(image_id, row)
    assert by_list[0].tolist() == sorted(first_rows.values())


def test_reading_the_parts_back_costs_a_bounded_few_bytes_per_image(tmp_path):
    n, per_part = 40_000, 1_000
    rows = _rows(n, rng1())
    parts = ScanParts(tmp_path / "scan").clear()
    for start in range(0, n, per_part):
        parts.write("manifest", rows[start : start + per_part])
    parts.write("skipped", [(n, "s3://traps/notes.txt", "not an image", "scan")])
    del rows
    tracemalloc.start()
    try:
        table = ScanParts(tmp_path / "scan").image_set()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == n and [s.path for s in table.skipped] == ["s3://traps/notes.txt"]
    assert table.image_ids[0] == f"{0:032x}" and table.paths[n - 1].endswith(f"{n - 1:09d}.png")
    assert peak / n < READ_BACK_PEAK_PER_IMAGE, f"{peak / n:.0f} B per image at the peak"
    assert held / n < HELD_PER_IMAGE, f"{held / n:.1f} B per image held"
    assert table.nbytes / n < 120
    on_disk = sorted(p.name for p in (tmp_path / "scan" / "columns").iterdir())
    assert on_disk == ["ids.bin", "ids.offsets", "labels.i32", "paths.bin", "paths.offsets"]
    assert table.records == [ImageRecord(p, i, lab) for _, p, i, lab in sorted(_rows(n, rng1()))]


def rng1():
    return np.random.default_rng(1)


def test_a_table_on_disk_reads_as_one_in_memory(tmp_path):
    rows = _rows(3_000, np.random.default_rng(2)) + [(3_000, "caf\udce9.png", "id-x", None)]
    in_memory, on_disk = ImageTable.from_rows(rows), ImageTable.from_rows(rows, folder=tmp_path)
    assert on_disk.records == in_memory.records and on_disk.image_ids == in_memory.image_ids
    assert on_disk.label_codes().tolist() == in_memory.label_codes().tolist()
    shard = split_ids(on_disk.image_ids, 3)[1]
    assert list(pickle.loads(pickle.dumps(shard))) == list(split_ids(in_memory.image_ids, 3)[1])
    assert list(pickle.loads(pickle.dumps(on_disk.image_ids))) == list(in_memory.image_ids)
    assert np.array_equal(
        exact_groups(on_disk.image_ids)[0], exact_groups(in_memory.image_ids)[0]
    )  # ids of two widths: the padded copy
    assert len(ImageTable.from_rows([], folder=tmp_path / "none")) == 0
    in_order = ImageTable.from_rows(sorted(rows), folder=tmp_path / "in_order")  # no sort
    assert in_order.records == in_memory.records
    assert sorted(p.name for p in (tmp_path / "in_order").iterdir()) == [
        "ids.bin", "ids.offsets", "labels.i32", "paths.bin", "paths.offsets"
    ]  # fmt: skip


@pytest.mark.parametrize("index", [3, -4])
def test_a_column_refuses_rows_it_does_not_have(index):
    with pytest.raises(IndexError):
        StringColumn.from_strings(["a", "b", "c"])[index]
    assert LabelColumn(np.array([0, -1], np.int32), ["x"])[1] is None
