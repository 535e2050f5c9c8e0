"""Member / public / holdout splits: the Split type, SecMI/PIA and own split files, member lists, checks and seeded partition."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import atomic_io
from .arrays import NpzReader, read_npy, read_npz_named
from .formats import sniff_format
from .member_names import (
    MAX_NAME_LIST_BYTES, NAMES_NEED_FOLDER, is_name_list, names_to_indices, read_member_file, warn_if_numbered,
)
from ..errors import ConfigError, QmiaError, SplitError
from ..file_kinds import file_kind
from ..safe_read import json_loads
from ..seeds import check_seed

__all__ = [
    "Split", "load_split", "save_split", "split_from_secmi", "split_from_members",
    "split_from_arrays", "read_index_file", "partition_nonmembers", "SPLIT_FORMAT",
]

SPLIT_FORMAT = "qmia-fast split v1"
_SECMI_KEYS = ("mia_train_idxs", "mia_eval_idxs")
_OWN_KEYS = ("members", "public", "holdout")
_MAX_TEXT_BYTES = 1 << 28  # index text/JSON files beyond 256 MiB are not index lists


@dataclass(frozen=True, eq=False)
class Split:
    """Three disjoint sets of image indices: members (trained on), public and holdout non-members.

    Arrays are int64, 1-D and read-only. `source` says where the split came from.
    """

    members: np.ndarray
    public: np.ndarray
    holdout: np.ndarray
    source: str = ""
    n_images: int | None = field(default=None)

    def __post_init__(self):
        for name in _OWN_KEYS:
            array = np.array(getattr(self, name), dtype=np.int64).reshape(-1)
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def nonmembers(self) -> np.ndarray:
        """Public then holdout indices."""
        return np.concatenate([self.public, self.holdout])

    def summary(self) -> str:
        text = f"{len(self.members)} members, {len(self.public)} public, {len(self.holdout)} holdout"
        return f"{text} ({self.source})" if self.source else text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: format tag, source, counts and the three index lists."""
        return {
            "format": SPLIT_FORMAT,
            "source": self.source,
            "n_images": self.n_images,
            "counts": {name: int(len(getattr(self, name))) for name in _OWN_KEYS},
            **{name: getattr(self, name).tolist() for name in _OWN_KEYS},
        }

    def validate(self, n_images: int, origin: str = "split") -> "Split":
        """Check the three sets against `n_images` images; SplitError naming the first bad index."""
        sets = {name: _check_indices(getattr(self, name), name, n_images, origin) for name in _OWN_KEYS}
        _check_disjoint(sets, origin)
        return self

    def __eq__(self, other) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in _OWN_KEYS)

    __hash__ = None


# --------------------------------------------------------------------------- checks

def _check_indices(values: Any, name: str, n_images: int, origin: str) -> np.ndarray:
    """One index set as int64, or SplitError naming `origin`, the set and the first bad entry."""
    try:
        array = np.asarray(values)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise SplitError(f"{origin}: {name} is not a list of integers ({exc})") from None
    if array.dtype == np.bool_:
        if array.ndim != 1 or len(array) != n_images:
            raise SplitError(f"{origin}: {name} is a boolean mask of shape {array.shape}, but there are "
                             f"{n_images} images; a mask needs one entry per image")
        array = np.flatnonzero(array)
    if array.ndim != 1:
        raise SplitError(f"{origin}: {name} must be a 1-D list of indices, got shape {array.shape}")
    if len(array) == 0:
        raise SplitError(f"{origin}: {name} is empty; every set needs at least one image")
    if array.dtype.kind == "f":
        bad = ~(np.isfinite(array) & (np.floor(array) == array))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SplitError(f"{origin}: {name}[{i}] = {array[i].item()!r} is not an integer index")
    elif array.dtype.kind == "U":
        raise SplitError(f"{origin}: {name} holds file names, not integer indices; {NAMES_NEED_FOLDER}")
    elif array.dtype.kind not in "iu":
        raise SplitError(f"{origin}: {name} holds {array.dtype} values, not integer indices")
    # Range check in the stored dtype (or float) before casting, so 2**63 cannot wrap to negative.
    out_of_range = (array < 0) | (array >= n_images)
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        raise SplitError(f"{origin}: {name}[{i}] = {array[i]} is out of range for {n_images} images "
                         f"(valid 0..{n_images - 1}); does the split belong to this --data?")
    array = array.astype(np.int64)
    order = np.argsort(array, kind="stable")
    ordered = array[order]
    repeats = ordered[1:] == ordered[:-1]
    if repeats.any():
        # The stable sort keeps equal values in file order, so order[1:][repeats] are the later copies.
        i = int(order[1:][repeats].min())
        first = int(np.flatnonzero(array == array[i])[0])
        raise SplitError(f"{origin}: {name}[{i}] = {array[i]} repeats {name}[{first}]; indices within a "
                         "set must be unique")
    return array


def _check_disjoint(sets: Mapping[str, np.ndarray], origin: str) -> None:
    names = list(sets)
    for a_pos, a in enumerate(names):
        for b in names[a_pos + 1:]:
            shared = np.isin(sets[b], sets[a])
            if shared.any():
                i = int(np.flatnonzero(shared)[0])
                raise SplitError(f"{origin}: {b}[{i}] = {sets[b][i]} is also in {a}; members and "
                                 "non-members must not overlap")


# --------------------------------------------------------------------------- seeded partition

_MASK64 = (1 << 64) - 1


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def partition_nonmembers(nonmembers: np.ndarray, public_fraction: float = 0.5,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split non-member indices into (public, holdout), both sorted, by a seeded shuffle.

    Each index gets the key splitmix64(splitmix64(seed) ^ index); the
    floor(public_fraction * n + 0.5) indices with the smallest keys are public. The result
    depends only on the set of indices and the seed (not on their order, the numpy version
    or the platform), and an index's side never depends on which other images are present.
    """
    if isinstance(public_fraction, bool) or not isinstance(public_fraction, (int, float, np.floating)) \
            or not 0.0 < float(public_fraction) < 1.0:
        raise ConfigError(f"--public-fraction must be a number strictly between 0 and 1, not {public_fraction!r}")
    seed = check_seed(seed, "--seed")
    nonmembers = np.asarray(nonmembers, dtype=np.int64)
    n = len(nonmembers)
    n_public = math.floor(float(public_fraction) * n + 0.5)
    if n_public < 1 or n_public > n - 1:
        raise SplitError(f"{n} non-member(s) cannot be split into non-empty public and holdout sets "
                         f"with public_fraction={public_fraction}; the split needs more non-members")
    seed_key = _splitmix64(np.array([int(seed)], dtype=np.uint64))[0]
    keys = _splitmix64(nonmembers.astype(np.uint64) ^ seed_key)
    order = np.argsort(keys, kind="stable")
    return np.sort(nonmembers[order[:n_public]]), np.sort(nonmembers[order[n_public:]])


# --------------------------------------------------------------------------- builders

def split_from_secmi(members, nonmembers, n_images: int, *, public_fraction: float = 0.5,
                     seed: int = 0, source: str = "SecMI/PIA split", origin: str = "--split",
                     names: tuple[str, str] = _SECMI_KEYS) -> Split:
    """Members as given; non-members partitioned into public/holdout (see partition_nonmembers)."""
    checked = {names[0]: _check_indices(members, names[0], n_images, origin),
               names[1]: _check_indices(nonmembers, names[1], n_images, origin)}
    _check_disjoint(checked, origin)
    try:
        public, holdout = partition_nonmembers(checked[names[1]], public_fraction, seed)
    except SplitError as exc:
        raise SplitError(f"{origin}: {exc}") from None
    return Split(checked[names[0]], public, holdout,
                 source=f"{source}; non-members split {public_fraction:g} public by seed {seed}",
                 n_images=n_images)


def split_from_members(members, n_images: int, *, public_fraction: float = 0.5, seed: int = 0,
                       origin: str = "--members", file_names=None) -> Split:
    """Members from a member file path or array; every other image is a non-member.

    With `file_names` (an image folder's relative paths in index order) the members may be named
    by file name (member_names.read_member_file), and a file of indices against numbered names
    that sort otherwise than by number gets one warning.
    """
    source = "member list"
    where = origin
    if isinstance(members, (str, Path)):
        source = f"member list {members}"
        origin = f"{where} {members}"
        if file_names is None:
            members = read_index_file(Path(members), where=where)
        else:
            if not Path(members).is_file():
                raise SplitError(_not_a_file(Path(members), origin))
            members = read_member_file(Path(members), where=where)
            if not is_name_list(members):
                warn_if_numbered(file_names, origin)
    members = _names_as_indices(members, "members", origin, file_names)
    checked = _check_indices(members, "members", n_images, origin)
    mask = np.ones(n_images, dtype=bool)
    mask[checked] = False
    nonmembers = np.flatnonzero(mask)
    return split_from_secmi(checked, nonmembers, n_images, public_fraction=public_fraction, seed=seed,
                            source=source, origin=origin, names=("members", "non-members"))


def _names_as_indices(values, name: str, origin: str, file_names):
    try:
        names = is_name_list(values)
    except SplitError as exc:
        raise SplitError(f"{origin}: {name}: {exc}") from None
    return names_to_indices(values, file_names, name, origin) if names else values


def split_from_arrays(arrays: Mapping[str, Any], n_images: int, *, origin: str, public_fraction: float = 0.5,
                      seed: int = 0, source: str | None = None, file_names=None) -> Split | None:
    """A Split from a mapping holding our keys (members/public/holdout) or SecMI's; None if neither.

    Sets may list relative file names instead of indices when `file_names` (the image folder's
    names in index order) is given.
    """
    source = source or origin
    arrays = {k: _names_as_indices(v, k, origin, file_names) if k in _OWN_KEYS + _SECMI_KEYS else v
              for k, v in arrays.items()}
    if all(k in arrays for k in _OWN_KEYS):
        checked = {k: _check_indices(arrays[k], k, n_images, origin) for k in _OWN_KEYS}
        _check_disjoint(checked, origin)
        return Split(checked["members"], checked["public"], checked["holdout"], source=source, n_images=n_images)
    if all(k in arrays for k in _SECMI_KEYS):
        return split_from_secmi(arrays[_SECMI_KEYS[0]], arrays[_SECMI_KEYS[1]], n_images,
                                public_fraction=public_fraction, seed=seed,
                                source=f"SecMI/PIA split {source}", origin=origin)
    return None


def load_split(path, n_images: int, *, public_fraction: float = 0.5, seed: int = 0,
               where: str = "--split", file_names=None) -> Split:
    """Read a split file (.npz or .json; ours or SecMI/PIA's) and check it against `n_images` images.

    With `file_names` (an image folder's relative paths in index order) the sets may list file
    names instead of indices; a split of indices against numbered names that sort otherwise
    than by number gets one warning.
    """
    path = Path(path)
    origin = f"{where} {path}"
    if not path.is_file():
        raise SplitError(_not_a_file(path, origin))
    kind = sniff_format(path)
    if kind == "npz":
        with NpzReader(path, where=where) as npz:
            present = [k for k in _OWN_KEYS + _SECMI_KEYS if k in npz]
            arrays = {k: npz.read(k, max_text_bytes=MAX_NAME_LIST_BYTES) for k in present}
    elif kind == "json":
        arrays = _read_json(path, origin)
        if not isinstance(arrays, dict):
            raise SplitError(f"{origin}: JSON split must be an object with members/public/holdout lists")
    else:
        raise SplitError(f"{origin}: unknown split file type; use .npz (ours or SecMI/PIA's "
                         "mia_train_idxs/mia_eval_idxs) or .json with members/public/holdout")
    if file_names is not None and not any(_quiet_is_names(v) for v in arrays.values()):
        warn_if_numbered(file_names, origin)
    split = split_from_arrays(arrays, n_images, origin=origin, public_fraction=public_fraction, seed=seed,
                              source=str(path), file_names=file_names)
    if split is None:
        raise SplitError(f"{origin}: holds neither members/public/holdout nor SecMI's "
                         "mia_train_idxs/mia_eval_idxs")
    return split


def _quiet_is_names(values) -> bool:
    try:
        return is_name_list(values)
    except SplitError:
        return True  # mixed: reported when the set is checked


def save_split(path, split: Split) -> None:
    """Write `split` atomically as .npz (int64 arrays + source) or .json (Split.to_dict())."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_io.write_json(path, split.to_dict())
    elif suffix == ".npz":
        atomic_io.save_npz(path, members=split.members, public=split.public, holdout=split.holdout,
                           source=np.array(split.source), format=np.array(SPLIT_FORMAT))
    else:
        raise ConfigError(f"split file {path} must end in .npz or .json")


# --------------------------------------------------------------------------- index files

def _not_a_file(path: Path, origin: str) -> str:
    if not path.exists():
        return f"{origin}: no such file"
    # A FIFO or device is never opened: reading it could block forever.
    return f"{origin}: is {file_kind(path.stat().st_mode)}, not a regular file; pass a file on disk"


def _read_text(path: Path, origin: str) -> str:
    try:
        if path.stat().st_size > _MAX_TEXT_BYTES:
            raise SplitError(f"{origin}: file is too large to be an index list")
        return path.read_bytes().decode("utf-8-sig")
    except QmiaError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitError(f"{origin}: cannot read it as text ({exc})") from None


def _read_json(path: Path, origin: str) -> Any:
    return json_loads(_read_text(path, origin), SplitError, f"{origin}: JSON is nested too deeply",
                      lambda exc: f"{origin}: invalid JSON ({exc})")


def read_index_file(path: Path, *, where: str = "--members") -> np.ndarray:
    """Indices from .npy, .npz (key members or the single array), .json (list or {"members": [...]})
    or text (integers separated by whitespace or commas; '#' starts a comment)."""
    origin = f"{where} {path}"
    if not path.is_file():
        raise SplitError(_not_a_file(path, origin))
    kind = sniff_format(path)
    if kind == "npy":
        return read_npy(path, where=where)
    if kind == "npz":
        return read_npz_named(path, "members", where=where, what="member", error=SplitError)
    if kind == "json":
        value = _read_json(path, origin)
        if isinstance(value, dict):
            value = value.get("members")
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise SplitError(f"{origin}: JSON must be a list of integers or {{\"members\": [...]}} "
                             f"({NAMES_NEED_FOLDER})")
        return _int_list_to_array(value, origin)
    text = _read_text(path, origin)
    values = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            try:
                values.append(int(token))
            except ValueError:
                raise SplitError(f"{origin}: line {line_number}: {token[:40]!r} is not an integer index "
                                 f"({NAMES_NEED_FOLDER})") from None
    return _int_list_to_array(values, origin)


def _int_list_to_array(values: list, origin: str) -> np.ndarray:
    for i, v in enumerate(values):
        if not -2**63 <= v < 2**63:
            raise SplitError(f"{origin}: entry {i} = {v} is out of range for an image index")
    return np.array(values, dtype=np.int64)
