"""Captions per image: the Hugging Face image-folder convention (metadata.jsonl / metadata.csv beside the images) or an explicit captions file."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, DataError
from .safe_read import read_capped_text
from .table_text import first_few, parse_csv, parse_jsonl, place_by_key

__all__ = ["METADATA_FILES", "DEFAULT_CAPTION_COLUMN", "MAX_CAPTION_FILE_BYTES", "read_captions",
           "find_metadata_file"]

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
DEFAULT_CAPTION_COLUMN = "text"
# 256 MiB: a caption file for millions of images; anything larger is not one.
MAX_CAPTION_FILE_BYTES = 1 << 28
_SUFFIXES = (".jsonl", ".csv")


def find_metadata_file(folder: Path) -> Path | None:
    """The folder's metadata.jsonl or metadata.csv (at its top level), None if neither; both is a DataError."""
    present = [folder / name for name in METADATA_FILES if (folder / name).exists() or (folder / name).is_symlink()]
    if len(present) > 1:
        raise DataError(f"--data {folder}: holds both {METADATA_FILES[0]} and {METADATA_FILES[1]}; keep one, so "
                        "that it is clear which captions belong to the images")
    return present[0] if present else None


def _check_column(column, name: str) -> str:
    if not isinstance(column, str) or not column.strip():
        raise ConfigError(f"{name} must be the name of a column, such as '{DEFAULT_CAPTION_COLUMN}', not {column!r:.40}")
    return column


def read_captions(source, *, n_images: int, file_names: Sequence[str] | None, caption_column: str | None = None,
                  where: str = "--captions", folder_metadata: bool = False) -> tuple[list[str] | None, str]:
    """(one caption per image in index order, or None; a note for the description) from a captions file.

    `source` is a .jsonl or .csv file whose rows hold a key column, 'file_name' (the image's
    path relative to the image folder, as the Hugging Face image-folder convention and
    diffusers' train_text_to_image.py use it) or 'index' (0-based position), and the text
    column `caption_column` (default 'text'). Every image needs exactly one row; an empty text
    is allowed (the null prompt). Rows for files that are not among the images are ignored with
    one counted warning. A missing column (the columns found are named), a caption that is not
    a string, a repeated row, non-UTF-8 text, a file over 256 MiB or one that is not a regular
    file is a DataError naming the file.

    For a folder's own metadata file (`folder_metadata`, read by load_data without --captions),
    a missing 'text' column when no caption_column was chosen is not an error: the file may
    describe other things, so there are then no captions and the note says why.
    """
    path = Path(source)
    origin = f"{where} {path}"
    explicit_column = caption_column is not None
    column = _check_column(caption_column, "--caption-column") if explicit_column else DEFAULT_CAPTION_COLUMN
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(f"{origin}: captions must be a .jsonl (one JSON object a line) or .csv file with "
                        "file_name (or index) and text columns")
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{origin}: no such file")
    text = read_capped_text(path, MAX_CAPTION_FILE_BYTES, where=where, what="captions file")
    try:
        columns, rows = parse_jsonl(text) if suffix == ".jsonl" else parse_csv(text)
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    by = "file_name" if "file_name" in columns else "index" if "index" in columns else None
    if by is None:
        raise DataError(f"{origin}: has no 'file_name' or 'index' column (columns: {first_few(columns, 8) or 'none'}); "
                        "name the image of each row in a 'file_name' column")
    if column not in columns:
        if folder_metadata and not explicit_column:
            return None, f"{path.name} has no '{column}' column (columns: {first_few(columns, 8)}), so no captions"
        raise DataError(f"{origin}: has no caption column {column!r} (columns: {first_few(columns, 8)}); pass "
                        "--caption-column NAME to choose one")
    entries = []
    for line, row in rows:
        if by not in row:
            raise DataError(f"{origin}: line {line} has no {by!r}; every row names its image")
        if column not in row:
            raise DataError(f"{origin}: line {line} has no {column!r} caption; give every row one (an empty "
                            "string is the null prompt)")
        caption = row[column]
        if not isinstance(caption, str):
            raise DataError(f"{origin}: line {line}: the {column!r} caption is {type(caption).__name__} "
                            f"{str(caption)[:40]!r}, not a string; quote it")
        entries.append((f"line {line}", row[by], caption))
    captions = place_by_key(entries, n_images=n_images, file_names=file_names, by=by, origin=origin,
                            what="caption", fix=f"add a row with {by} and {column} for each image (an empty "
                                                "text is the null prompt)")
    return captions, f"captions from {path.name} ({column!r})"

