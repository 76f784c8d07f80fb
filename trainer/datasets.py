"""Dataset readers: a folder of wav files becomes a sorted list of :class:`Clip` records.

Four layouts are understood (``LAYOUTS``):

``"mimii"``
    ``<root>/<snr>_dB_<machine>/<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav``; the root may also
    be one SNR folder (``6_dB_fan/``, whose ``fan/id_00/...`` is how the MIMII zips unpack), a folder
    of machine folders (``valve/id_00/...``) or one machine folder (``id_00/...``). Where no
    ``<snr>_dB_`` folder names the SNR it is unknown (``None``).
``"dcase2020"``
    DCASE 2020 Task 2: ``<root>/<machine>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav`` (an
    evaluation-set ``id_XX_NNNNNNNN.wav`` has label ``"unknown"``); the root may be one machine folder.
``"dcase"``
    DCASE 2021-2024 Task 2 (sections and domains):
    ``<root>/<machine>/{train,test}/section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN_<attrs>.wav``
    (evaluation-set ``section_XX_NNNN.wav`` has label ``"unknown"``), with the attribute table
    ``<root>/<machine>/attributes_XX.csv`` read where present.
``"folder"``
    ``<root>/normal/*.wav`` and optionally ``<root>/abnormal/*.wav`` (or ``anomaly/``); the machine
    type is the root folder's name.

Listing never decodes audio: a dataset of 30 000 clips is listed from file names in seconds. Each
file's first 12 bytes are checked for a RIFF/WAVE header so that a non-wav or unreadable file is
reported by name now, not hours later in the middle of training.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_asd.errors import DatasetError, ParameterError

__all__ = [
    "LAYOUTS",
    "LABELS",
    "Attributes",
    "Clip",
    "attribute_group",
    "detect_layout",
    "filter_clips",
    "read_dataset",
    "scan_dataset",
]

LAYOUTS = ("mimii", "dcase2020", "dcase", "folder")
"""Known layouts; ``"dcase"`` is DCASE 2021-2024 Task 2 (sections, domains, attributes)."""

LABELS = ("normal", "anomaly", "unknown")
"""Clip labels. MIMII's ``abnormal`` folder and the plain folder's ``abnormal/`` become ``"anomaly"``."""

_WAV_SUFFIX = ".wav"
_EXAMPLES = 3  # offending paths quoted in an error message: enough to see the pattern, short to read


class Attributes(Mapping[str, str]):
    """An immutable, hashable, ordered ``str -> str`` mapping (a clip's DCASE attributes).

    A plain ``dict`` would make :class:`Clip` unhashable, and ``types.MappingProxyType`` cannot be
    sent to worker processes; this small mapping is both hashable and picklable. Insertion order is
    kept because it is the order of the attribute columns, which :func:`attribute_group` relies on.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        merged: dict[str, str] = {}
        for key, value in pairs:
            merged[str(key)] = str(value)
        self._items: tuple[tuple[str, str], ...] = tuple(merged.items())

    def __getitem__(self, key: str) -> str:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attributes):
            return self._items == other._items
        return Mapping.__eq__(self, other)

    def __repr__(self) -> str:
        return f"Attributes({dict(self._items)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Attributes, (self._items,))


@dataclass(frozen=True, kw_only=True)
class Clip:
    """One wav file of a dataset and what its location says about it. Hashable, sortable by path."""

    path: Path
    """The wav file."""
    machine: str
    """Machine type, e.g. ``"fan"``, ``"ToyCar"``; ``"unknown"`` where the layout does not say."""
    id: str = ""
    """Machine ID ``"id_00"`` (MIMII, DCASE 2020) or section ``"section_00"`` (DCASE 2021+); ``""`` for
    a plain folder."""
    snr_db: float | None = None
    """Signal-to-noise ratio of the mixture, dB (MIMII only; ``None`` where unknown)."""
    domain: str | None = None
    """``"source"`` or ``"target"`` (DCASE 2021+), else ``None``."""
    split: str | None = None
    """``"train"`` or ``"test"`` where the layout says so, else ``None``."""
    label: str = "unknown"
    """``"normal"``, ``"anomaly"`` or ``"unknown"`` (unlabelled evaluation clips)."""
    attributes: Mapping[str, str] = field(default_factory=Attributes)
    """DCASE 2021+ attributes (from ``attributes_XX.csv`` or the file name), in column order; else empty."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not isinstance(self.attributes, Attributes):
            object.__setattr__(self, "attributes", Attributes(self.attributes))
        if self.label not in LABELS:
            raise ParameterError(f"clip {self.path}: label must be one of {LABELS}, got {self.label!r}")
        if self.domain not in (None, "source", "target"):
            raise ParameterError(f"clip {self.path}: domain must be 'source', 'target' or None, got {self.domain!r}")
        if self.split not in (None, "train", "test"):
            raise ParameterError(f"clip {self.path}: split must be 'train', 'test' or None, got {self.split!r}")

    @property
    def is_anomaly(self) -> bool:
        """True for an anomalous clip; ``False`` for normal *and* unknown ones."""
        return self.label == "anomaly"


# ---------------------------------------------------------------------------------------------
# File-name grammar of each layout
# ---------------------------------------------------------------------------------------------

_SNR_DIR = re.compile(r"^(?P<snr>[-+]?\d+(?:\.\d+)?)_dB_(?P<machine>.+)$")
_ID_DIR = re.compile(r"^id_\d+$")
_MIMII_LABELS = {"normal": "normal", "abnormal": "anomaly"}
_DCASE2020_NAME = re.compile(r"^(?:(?P<label>normal|anomaly)_)?(?P<id>id_\d+)_(?P<num>\d+)\.wav$", re.IGNORECASE)
_DCASE_NAME = re.compile(
    r"^(?P<section>section_\d+)_"
    r"(?:(?P<domain>source|target)_)?(?:(?P<split>train|test)_)?(?:(?P<label>normal|anomaly)_)?"
    r"(?P<num>\d+)(?:_(?P<attrs>.+))?\.wav$",
    re.IGNORECASE,
)
_SPLITS = ("train", "test")
_FOLDER_LABELS = {"normal": "normal", "abnormal": "anomaly", "anomaly": "anomaly"}
_NO_ATTRIBUTE = "noAttribute"  # DCASE 2023/2024 name for "this machine type has no attributes"


def _root_name(root: Path) -> str:
    return root.resolve().name or "unknown"


def _snr_from_dir(name: str) -> tuple[float, str] | None:
    m = _SNR_DIR.match(name)
    return (float(m["snr"]), m["machine"]) if m else None


def _parse_mimii(root: Path, parts: tuple[str, ...], path: Path, ctx: _Context) -> Clip | None:
    if not 3 <= len(parts) <= 5:
        return None
    id_dir, label_dir, _name = parts[-3:]
    if not _ID_DIR.match(id_dir) or label_dir not in _MIMII_LABELS:
        return None
    prefix = parts[:-3]
    snr: float | None = None
    if len(prefix) == 2:  # <snr>_dB_<machine>/<machine>/id_XX/...
        parsed = _snr_from_dir(prefix[0])
        if parsed is None:
            return None
        snr, machine = parsed[0], prefix[1]
    elif len(prefix) == 1:  # <machine>/id_XX/...; the root may be the <snr>_dB_<machine> folder
        if _snr_from_dir(prefix[0]) is not None:
            return None  # <snr>_dB_<machine>/id_XX lacks the machine folder: not a MIMII tree
        machine = prefix[0]
        parsed = _snr_from_dir(ctx.root_name)
        snr = parsed[0] if parsed else None
    else:  # the root is one machine folder: id_XX/...
        machine = ctx.root_name
        parsed = _snr_from_dir(ctx.parent_name)
        snr = parsed[0] if parsed else None
    return Clip(path=path, machine=machine, id=id_dir, snr_db=snr, label=_MIMII_LABELS[label_dir])


def _parse_dcase2020(root: Path, parts: tuple[str, ...], path: Path, ctx: _Context) -> Clip | None:
    if len(parts) not in (2, 3) or parts[-2] not in _SPLITS:
        return None
    m = _DCASE2020_NAME.match(parts[-1])
    if m is None:
        return None
    machine = parts[0] if len(parts) == 3 else ctx.root_name
    label = (m["label"] or "unknown").lower()
    return Clip(path=path, machine=machine, id=m["id"].lower(), split=parts[-2], label=label)


def _attributes_from_name(tail: str | None) -> Attributes:
    """``car_B1_spd_31V_mic_1`` -> ``{car: B1, spd: 31V, mic: 1}``; an unpaired tail is kept whole."""
    if not tail or tail == _NO_ATTRIBUTE:
        return Attributes()
    tokens = tail.split("_")
    if len(tokens) % 2:
        return Attributes({"attributes": tail})
    return Attributes(zip(tokens[0::2], tokens[1::2]))


def _parse_dcase(root: Path, parts: tuple[str, ...], path: Path, ctx: _Context) -> Clip | None:
    if len(parts) not in (2, 3) or parts[-2] not in _SPLITS:
        return None
    m = _DCASE_NAME.match(parts[-1])
    if m is None:
        return None
    machine = parts[0] if len(parts) == 3 else ctx.root_name
    machine_dir = path.parent.parent
    attributes = ctx.attribute_table(machine_dir).get((parts[-2], parts[-1]))
    if attributes is None:
        attributes = _attributes_from_name(m["attrs"])
    return Clip(
        path=path,
        machine=machine,
        id=m["section"].lower(),
        domain=m["domain"].lower() if m["domain"] else None,
        split=parts[-2],  # the folder, which is where the file actually is
        label=(m["label"] or "unknown").lower(),
        attributes=attributes,
    )


def _parse_folder(root: Path, parts: tuple[str, ...], path: Path, ctx: _Context) -> Clip | None:
    if len(parts) < 2 or parts[0] not in _FOLDER_LABELS:
        return None
    return Clip(path=path, machine=ctx.root_name, id="", label=_FOLDER_LABELS[parts[0]])


_PARSERS = {
    "mimii": _parse_mimii,
    "dcase2020": _parse_dcase2020,
    "dcase": _parse_dcase,
    "folder": _parse_folder,
}


class _Context:
    """Per-scan state: the root's own name and the DCASE attribute tables read so far."""

    def __init__(self, root: Path) -> None:
        resolved = root.resolve()
        self.root_name = resolved.name or "unknown"
        self.parent_name = resolved.parent.name
        self._tables: dict[Path, dict[tuple[str, str], Attributes]] = {}

    def attribute_table(self, machine_dir: Path) -> dict[tuple[str, str], Attributes]:
        """``(split folder, file name) -> attributes`` from every ``attributes_*.csv`` of a machine folder."""
        table = self._tables.get(machine_dir)
        if table is None:
            table = {}
            for csv_path in sorted(machine_dir.glob("attributes_*.csv")):
                table.update(_read_attribute_csv(csv_path))
            self._tables[machine_dir] = table
        return table


def _read_attribute_csv(path: Path) -> dict[tuple[str, str], Attributes]:
    """Read a DCASE ``attributes_XX.csv``: ``file_name,d1p,d1v,d2p,d2v,...`` (parameter, value pairs)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the attribute table ({exc}); fix or remove the file") from exc
    if not rows or not rows[0] or rows[0][0].strip() != "file_name":
        raise DatasetError(
            f"{path}: not a DCASE attribute table (the first column must be 'file_name'); fix or remove the file"
        )
    table: dict[tuple[str, str], Attributes] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        if len(row) % 2 == 0:
            raise DatasetError(f"{path}, line {lineno}: expected file_name then parameter/value pairs, got {row}")
        file_parts = Path(row[0].strip().replace("\\", "/")).parts
        if len(file_parts) < 2:
            raise DatasetError(f"{path}, line {lineno}: file_name {row[0]!r} lacks its train/test folder")
        pairs = [(p.strip(), v.strip()) for p, v in zip(row[1::2], row[2::2]) if p.strip() and p.strip() != _NO_ATTRIBUTE]
        table[(file_parts[-2], file_parts[-1])] = Attributes(pairs)
    return table


# ---------------------------------------------------------------------------------------------
# Scanning
# ---------------------------------------------------------------------------------------------


def _check_root(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"{path}: no such folder; check the dataset path")
    if not path.is_dir():
        raise DatasetError(f"{path}: is a file, not a dataset folder; pass the folder that holds the wav files")
    return path


def _list_wavs(root: Path) -> list[Path]:
    """Every ``*.wav`` below ``root`` (hidden files and folders skipped), sorted by path."""

    def fail(exc: OSError) -> None:
        raise DatasetError(f"{exc.filename}: cannot list this folder ({exc.strerror}); check its permissions") from exc

    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(_WAV_SUFFIX):
                found.append(Path(dirpath, name))
    if not found:
        raise DatasetError(
            f"{root}: no wav files found; expected one of the layouts {LAYOUTS} "
            "(see trainer/datasets.py), e.g. normal/*.wav"
        )
    found.sort()
    return found


def _check_header(path: Path) -> None:
    """Fail on a file that cannot be opened or does not start like a wav file (cheap: 12 bytes)."""
    try:
        # os.open/os.read instead of a Python file object: a third of the cost on 30 000 files
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.read(fd, 12)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror}); check its permissions or remove it") from exc
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise DatasetError(
            f"{path}: not a wav file (no RIFF/WAVE header); it may be truncated or another format - remove it"
        )


def _examples(paths: Iterable[Path]) -> str:
    items = list(paths)
    shown = ", ".join(str(p) for p in items[:_EXAMPLES])
    return shown + (f" (and {len(items) - _EXAMPLES} more)" if len(items) > _EXAMPLES else "")


def _classify(root: Path, files: list[Path]) -> tuple[str, list[Clip]]:
    """Find the single layout every file follows; errors name the files that do not fit."""
    ctx = _Context(root)
    by_layout: dict[str, list[Clip]] = {name: [] for name in LAYOUTS}
    unmatched: list[Path] = []
    for path in files:
        parts = path.relative_to(root).parts
        for name in LAYOUTS:
            clip = _PARSERS[name](root, parts, path, ctx)
            if clip is not None:
                by_layout[name].append(clip)
                break
        else:
            unmatched.append(path)
    present = [name for name in LAYOUTS if by_layout[name]]
    if unmatched:
        hint = f"; the others look like '{present[0]}'" if len(present) == 1 else ""
        raise DatasetError(
            f"{root}: {len(unmatched)} of {len(files)} wav files match no known layout {LAYOUTS}"
            f"{hint}: {_examples(unmatched)}. Move them out or point at the dataset folder itself"
        )
    if len(present) > 1:
        detail = "; ".join(f"{len(by_layout[n])} look like '{n}' (e.g. {by_layout[n][0].path})" for n in present)
        raise DatasetError(
            f"{root}: mixed layouts: {detail}. Point at one dataset, or force one with --layout"
        )
    return present[0], by_layout[present[0]]


def detect_layout(root: str | os.PathLike) -> str:
    """The layout of a dataset folder, one of :data:`LAYOUTS`.

    Raises
    ------
    DatasetError
        The folder is missing, holds no wav files, or its files follow no single known layout (the
        message names the folder and example files).
    """
    path = _check_root(root)
    layout, _ = _classify(path, _list_wavs(path))
    return layout


def read_dataset(root: str | os.PathLike, *, layout: str = "auto", check_headers: bool = True) -> list[Clip]:
    """List a dataset's clips from its folder structure and file names; see :func:`scan_dataset`."""
    return scan_dataset(root, layout=layout, check_headers=check_headers)[1]


def scan_dataset(
    root: str | os.PathLike, *, layout: str = "auto", check_headers: bool = True
) -> tuple[str, list[Clip]]:
    """List a dataset's clips from its folder structure and file names, without decoding audio.

    Parameters
    ----------
    root
        The dataset folder (see the module docstring for what each layout accepts as a root).
    layout
        ``"auto"`` (detect) or one of :data:`LAYOUTS` to force it.
    check_headers
        Read each file's first 12 bytes and fail on one that cannot be opened or is not a wav file.
        Costs one small read per file (about a second for 30 000 files on a local disk).

    Returns
    -------
    layout : str
        The layout used (detected or forced).
    clips : list of Clip
        Sorted by path, so the same folder always gives the same list.

    Raises
    ------
    DatasetError
        Missing folder, no wav files, unknown or mixed layouts, a file that does not fit the forced
        layout, an unreadable or non-wav file, a malformed ``attributes_XX.csv``. The message names
        the path.
    ParameterError
        ``layout`` is not ``"auto"`` or one of :data:`LAYOUTS`.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ParameterError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    path = _check_root(root)
    files = _list_wavs(path)
    if layout == "auto":
        layout, clips = _classify(path, files)
    else:
        ctx = _Context(path)
        parser = _PARSERS[layout]
        clips, misfits = [], []
        for file in files:
            clip = parser(path, file.relative_to(path).parts, file, ctx)
            (misfits.append(file) if clip is None else clips.append(clip))
        if misfits:
            raise DatasetError(
                f"{path}: {len(misfits)} of {len(files)} wav files do not follow the '{layout}' layout: "
                f"{_examples(misfits)}; try --layout auto"
            )
    if check_headers:
        for clip in clips:
            _check_header(clip.path)
    clips.sort(key=lambda c: c.path)
    return layout, clips


# ---------------------------------------------------------------------------------------------
# Selection and grouping
# ---------------------------------------------------------------------------------------------


def _as_set(value: Any) -> set[Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, int, float)):
        return {value}
    return set(value)


def _normalise_id(value: str | int) -> str:
    """``0``, ``"00"`` and ``"id_00"`` all name ``id_00``; ``"section_00"`` stays as it is."""
    if isinstance(value, int):
        return f"{value:02d}"
    return str(value).lower()


def filter_clips(
    clips: Iterable[Clip],
    *,
    machine: str | Iterable[str] | None = None,
    ids: str | Iterable[str] | None = None,
    snr_db: float | Iterable[float] | None = None,
    domain: str | Iterable[str] | None = None,
    split: str | Iterable[str] | None = None,
    label: str | Iterable[str] | None = None,
) -> list[Clip]:
    """Clips matching every given criterion (``None`` means "any"), in their original order.

    ``ids`` accepts full names (``"id_00"``, ``"section_01"``) or the number alone (``"00"``), which
    matches any ID or section with that number.
    """
    machines, snrs, domains, splits, labels = map(_as_set, (machine, snr_db, domain, split, label))
    id_set = {_normalise_id(v) for v in _as_set(ids)} if ids is not None else None
    snrs = {float(s) for s in snrs} if snrs is not None else None

    def keep(c: Clip) -> bool:
        if machines is not None and c.machine not in machines:
            return False
        if id_set is not None and c.id.lower() not in id_set and c.id.rpartition("_")[2] not in id_set:
            return False
        if snrs is not None and c.snr_db not in snrs:
            return False
        if domains is not None and c.domain not in domains:
            return False
        if splits is not None and c.split not in splits:
            return False
        return labels is None or c.label in labels

    return [c for c in clips if keep(c)]


def attribute_group(clip: Clip) -> str:
    """A stable class label for the self-supervised machine-ID objective.

    DCASE 2021+ clips: machine, section and attribute values, e.g.
    ``"ToyCar/section_00/car_B1_spd_31V_mic_1"`` (the machine type is included so that sections of
    different machine types never share a class). Others: ``"<machine>/<id>"`` (``"fan/id_00"``), or
    the machine alone for a plain folder.
    """
    base = f"{clip.machine}/{clip.id}" if clip.id else clip.machine
    if clip.attributes:
        return base + "/" + "_".join(f"{k}_{v}" for k, v in clip.attributes.items())
    return base


def count_clips(clips: Iterable[Clip], *keys: str) -> Counter[tuple[Any, ...]]:
    """Count clips by the given :class:`Clip` field names, e.g. ``count_clips(clips, "machine", "label")``."""
    return Counter(tuple(getattr(c, k) for k in keys) for c in clips)
