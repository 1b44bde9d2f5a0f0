"""Image collections: discovery, content hashing and robust decoding (the scan stage).

Public names (other modules rely on them; import them from here):
- ImageRecord(path, image_id, label): one usable image; image_id is a content hash.
- SkippedImage(path, reason, stage): a file that was not used, and why.
- CollectionError: a source that cannot be used as given (no usable image, a list file
  without a path column, ...); a ValueError.
- ImageSet(records, skipped): from_folder / from_list / from_prefix / from_source (keywords:
  the fields of ScanSettings); write_manifest / write_skipped; labels, label_names,
  label_codes().
- decode_image(source, max_pixels, target_size) -> RGB PIL image, or raises
  ImageDecodeError(reason). Pass the model's resize size as target_size: big JPEGs then
  decode at reduced scale (5-8x faster on a 40 MP photo).
- decode_variants(source, target_sizes, max_pixels) -> {size: RGB image}: one read, one
  decode per JPEG scale, each size exactly what decode_image would give it.
- read_checked(path, image_id) -> the bytes, or ImageDecodeError if unreadable or changed
  since the scan (CHANGED_SINCE_SCAN): decode what it returns.
- probe_image(data, max_pixels) -> (format, width, height) from the header alone; sizes over
  max_pixels and aspect ratios over MAX_ASPECT_RATIO are refused.
- iter_source(source, labels_from_folders, storage_options): the candidates' names, lazily,
  without reading them; scan_bytes(path, label, data, max_pixels): the scan's verdict on
  bytes a worker read (``extraction.scan: workers``); ScanParts(folder): its manifest and
  skipped files in parts, written per batch, read back as an ImageTable.
- ImageTable(paths, image_ids, labels, skipped): usable images in columns (StringColumn,
  LabelColumn), read like an ImageSet; a worker scan's is files (``ScanParts(...)/columns``),
  memory-mapped: the driver never holds its manifest whole, nor an object per image.
- content_id(bytes), to_rgb(image), DEFAULT_MAX_PIXELS, ALLOWED_FORMATS, IMAGE_EXTENSIONS.

Two stages may reject a file. The *scan* reads every file once (content hash + a header
probe that never decodes pixels), so bombs and non-images are refused cheaply. The *decode*
stage (during extraction) finds what only a full decode reveals: truncated or corrupt pixel
data. Both record a short, human reason.

Modules: ``_records`` (what a scan produces), ``_decode`` (probe and decode), ``_scan``
(walking folders, parsing list files, reading candidates on a thread pool) and
``_collection`` (ImageSet).
"""

from ._collection import ImageSet
from ._decode import (
    ALLOWED_FORMATS,
    CHANGED_SINCE_SCAN,
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    decode_image,
    decode_variants,
    probe_image,
    read_checked,
    to_rgb,
)
from ._listing import ScanParts, iter_source, scan_bytes
from ._records import CollectionError, ImageDecodeError, ImageRecord, SkippedImage, content_id
from ._scan import IGNORED_NAMES, IMAGE_EXTENSIONS, LOG_EVERY_S, ScanSettings
from ._table import ImageTable, LabelColumn, StringColumn

__all__ = [
    "ALLOWED_FORMATS",
    "CHANGED_SINCE_SCAN",
    "DEFAULT_MAX_PIXELS",
    "IGNORED_NAMES",
    "IMAGE_EXTENSIONS",
    "CollectionError",
    "LOG_EVERY_S",
    "MAX_ASPECT_RATIO",
    "ImageDecodeError",
    "ImageRecord",
    "ImageSet",
    "ImageTable",
    "LabelColumn",
    "ScanParts",
    "ScanSettings",
    "StringColumn",
    "SkippedImage",
    "content_id",
    "decode_image",
    "decode_variants",
    "iter_source",
    "probe_image",
    "read_checked",
    "scan_bytes",
    "to_rgb",
]
