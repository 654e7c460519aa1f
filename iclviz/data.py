"""Datasets: the shipped ones, a user's data folder, uploaded CSV/JSONL and Hub datasets.

A dataset has ``labels`` (class names), ``train`` and ``test`` frames with ``text`` and
``label`` (an index into ``labels``). Demonstrations come from train, queries from test.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import IclvizError

SHIPPED_DIR = Path(__file__).parent / "datasets"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_ROWS = 200_000
UNRELATED_LABEL_WORDS = ("foo", "bar", "baz", "qux", "zip", "zap")
TEST_PARTS = ("locate", "evaluate")  # the halves of a test split (Dataset.test_part)


class DataError(IclvizError, ValueError):
    """A dataset problem the app shows as a message."""


@dataclass
class Dataset:
    name: str
    labels: list[str]
    train: pd.DataFrame
    test: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def short_demonstrations(self, max_chars: int) -> Dataset:
        """Keep only train sentences of at most ``max_chars`` characters (prompt length stays bounded)."""
        train = self.train[self.train["text"].str.len() <= max_chars].reset_index(drop=True)
        return Dataset(self.name, self.labels, train, self.test, self.meta)

    def test_part(self, part: str) -> Dataset:
        """Half of the test split, so that heads are located on sentences the test never sees.

        ``"locate"`` keeps the test rows at even positions, ``"evaluate"`` those at odd positions
        (``"all"``: the whole split). The split is fixed by position, so every run agrees on it."""
        if part == "all":
            return self
        if part not in TEST_PARTS:
            raise DataError(f"a test part is one of {', '.join(TEST_PARTS)}, not {part!r}")
        test = self.test.iloc[TEST_PARTS.index(part)::2].reset_index(drop=True)
        return Dataset(self.name, self.labels, self.train, test, dict(self.meta, test_part=part))

    def restrict(self, classes: list[int]) -> Dataset:
        """Keep only the given class indices, re-indexed 0..k-1 (e.g. AGNews World vs Sports)."""
        valid = all(0 <= c < len(self.labels) for c in classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or not valid:
            raise DataError(f"choose at least two distinct classes out of {len(self.labels)}")
        remap = {c: i for i, c in enumerate(classes)}

        def sub(df):
            df = df[df["label"].isin(classes)].copy()
            df["label"] = df["label"].map(remap)
            return df.reset_index(drop=True)

        return Dataset(f"{self.name}[{','.join(self.labels[c] for c in classes)}]",
                       [self.labels[c] for c in classes], sub(self.train), sub(self.test), self.meta)


def data_dirs(extra: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for datasets, in order: the one given, $ICLVIZ_DATA, shipped, `shared/data` beside the repo."""
    dirs = []
    for d in (extra, os.environ.get("ICLVIZ_DATA")):
        if d:
            dirs.append(Path(d).expanduser())
    dirs.append(SHIPPED_DIR)
    for parent in Path(__file__).resolve().parents[1:4]:
        cand = parent / "shared" / "data"
        if cand.is_dir():
            dirs.append(cand)
            break
    return dirs


def list_datasets(data_dir=None) -> list[str]:
    names = []
    for d in data_dirs(data_dir):
        if d.is_dir():
            for sub in sorted(d.iterdir()):
                if (sub / "meta.json").is_file() and (sub / "train.jsonl").is_file() and sub.name not in names:
                    names.append(sub.name)
    return names


def dataset_path(name: str, data_dir=None) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"{name!r} is not a dataset name")
    for d in data_dirs(data_dir):
        if (d / name / "meta.json").is_file():
            return d / name
    raise DataError(f"no dataset {name!r}; available: {', '.join(list_datasets(data_dir))}. ETHOS and "
                    "Financial PhraseBank are not shipped: pass --data-dir or set ICLVIZ_DATA to their folder")


def load_dataset(name: str, data_dir=None) -> Dataset:
    """A dataset folder (``meta.json``, ``train.jsonl``, ``test.jsonl``), every file checked: DataError naming
    the file and the line on the first problem (run before any model is loaded)."""
    path = dataset_path(name, data_dir)
    meta = _read_meta(path / "meta.json")
    labels = [str(x) for x in meta["labels"]]
    train = _read_rows(path / "train.jsonl", labels)
    test = _read_rows(path / "test.jsonl", labels)
    return Dataset(name, labels, train, test, meta)


MAX_DATA_FILE_BYTES = 500 * 1024 * 1024


def _read_bytes(path: Path, limit: int = MAX_DATA_FILE_BYTES) -> bytes:
    """A data file's bytes: a regular file (not a device, FIFO or folder, also through a link) under ``limit``."""
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (a dataset folder holds meta.json, train.jsonl and test.jsonl)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file")
    if st.st_size > limit:
        raise DataError(f"{path}: {st.st_size / 1e6:,.0f} MB; the limit is {limit / 1e6:,.0f} MB")
    if st.st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (a binary file?)") from None


def _read_meta(path: Path) -> dict:
    text = _decode(path, _read_bytes(path, 10 * 1024 * 1024))
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path} line {getattr(exc, 'lineno', 1)}: not valid JSON") from None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if (not isinstance(labels, list) or len(labels) < 2
            or not all(isinstance(x, str) and x.strip() for x in labels) or len(set(labels)) != len(labels)):
        raise DataError(f"{path}: needs \"labels\", a list of at least two distinct class names")
    return meta


def _read_rows(path: Path, labels: list[str]) -> pd.DataFrame:
    """A JSONL file of {"text": ..., "label": ...} rows (label: an index into ``labels`` or one of them)."""
    index = {w: i for i, w in enumerate(labels)}
    texts, codes = [], []
    for n, line in enumerate(_decode(path, _read_bytes(path)).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            r = json.loads(line)
        except ValueError:
            raise DataError(f"{where}: not valid JSON") from None
        if not isinstance(r, dict) or "text" not in r or "label" not in r:
            raise DataError(f"{where}: each line needs \"text\" and \"label\"")
        text, label = r["text"], r["label"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: \"text\" must be a non-empty string; got {json.dumps(text)[:40]}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where}: \"text\" holds a character that is not valid text (a lone surrogate)") from None
        if isinstance(label, str) and label in index:
            label = index[label]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(labels):
            raise DataError(f"{where}: \"label\" must be a class index from 0 to {len(labels) - 1} (or a class "
                            f"name from meta.json); got {json.dumps(label)[:40]}")
        texts.append(text)
        codes.append(label)
    if not texts:
        raise DataError(f"{path}: no rows")
    return pd.DataFrame({"text": texts, "label": pd.Series(codes, dtype="int64")})


def read_table(content: bytes, filename: str, max_bytes: int = MAX_UPLOAD_BYTES) -> pd.DataFrame:
    """Parse an uploaded CSV or JSONL with ``text`` and ``label`` columns (labels: names or indices)."""
    if len(content) > max_bytes:
        raise DataError(f"the file is {len(content) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    suffix = Path(filename).suffix.lower()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError("the file is not UTF-8 text") from None
    try:
        if suffix in (".jsonl", ".json"):
            df = pd.read_json(io.StringIO(text), lines=True)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(io.StringIO(text), sep="\t" if suffix == ".tsv" else ",")
        else:
            raise DataError("upload a .csv, .tsv or .jsonl file")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure becomes a message
        raise DataError(f"could not parse {Path(filename).name}: {str(exc).splitlines()[0][:200]}") from None
    if len(df) > MAX_UPLOAD_ROWS:
        raise DataError(f"the file has {len(df):,} rows; the limit is {MAX_UPLOAD_ROWS:,}")
    if not {"text", "label"} <= set(df.columns):
        raise DataError(f"the file needs columns 'text' and 'label'; it has {', '.join(map(str, df.columns))}")
    df = df[["text", "label"]].dropna()
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"] != ""]
    if df.empty:
        raise DataError("the file has no rows with text and a label")
    return df.reset_index(drop=True)


def dataset_from_table(df: pd.DataFrame, name: str = "upload", test_fraction: float = 0.5, seed: int = 0) -> Dataset:
    """Turn a text/label table into a Dataset, splitting train/test with a seed."""
    if pd.api.types.is_numeric_dtype(df["label"]):
        labels = [str(x) for x in sorted(df["label"].unique())]
        codes = df["label"].map({v: i for i, v in enumerate(sorted(df["label"].unique()))})
    else:
        labels = sorted(df["label"].astype(str).unique())
        codes = df["label"].astype(str).map({v: i for i, v in enumerate(labels)})
    if len(labels) < 2:
        raise DataError("the data has only one label; ICL needs at least two")
    df = pd.DataFrame({"text": df["text"], "label": codes.astype(int)}).sample(frac=1.0, random_state=seed)
    n_test = max(1, int(len(df) * test_fraction))
    return Dataset(name, labels, df.iloc[n_test:].reset_index(drop=True), df.iloc[:n_test].reset_index(drop=True))


def load_hub_dataset(name: str, text_column: str = "text", label_column: str = "label") -> Dataset:
    """A Hugging Face dataset by name (needs internet and the ``datasets`` package)."""
    try:
        import datasets  # noqa: PLC0415
    except ImportError:
        raise DataError("loading Hub datasets needs the 'datasets' package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"could not load {name!r} from the Hub (no network, or no such dataset): "
                        f"{str(exc).splitlines()[0][:200]}") from None
    split_test = "test" if "test" in ds else ("validation" if "validation" in ds else None)
    if "train" not in ds or split_test is None:
        raise DataError(f"{name!r} needs a train and a test (or validation) split")
    feat = ds["train"].features.get(label_column)
    labels = list(getattr(feat, "names", []) or sorted(set(ds["train"][label_column])))

    def frame(split):
        return pd.DataFrame({"text": ds[split][text_column], "label": ds[split][label_column]})

    return Dataset(name, [str(x) for x in labels], frame("train"),
                   frame(split_test))


def label_words_for(n_labels: int, words=None) -> tuple[str, ...]:
    words = tuple(words) if words else UNRELATED_LABEL_WORDS[:n_labels]
    if len(words) != n_labels:
        raise DataError(f"the dataset has {n_labels} labels but {len(words)} label words were given")
    return words


def sample_demonstrations(ds: Dataset, k_per_label: int | list[int], seed: int, order: str = "shuffle"
                          ) -> list[tuple[str, int]]:
    """Draw demonstrations from train: ``k_per_label`` per class (balanced by default).

    ``k_per_label`` may be a list giving each class's count (for the majority-bias
    experiments). ``order``: 'shuffle' (seeded) or 'grouped' (class by class).
    """
    rng = random.Random(seed)
    counts = [k_per_label] * len(ds.labels) if isinstance(k_per_label, int) else list(k_per_label)
    if len(counts) != len(ds.labels):
        raise DataError("give one demonstration count per label")
    demos = []
    for label, k in enumerate(counts):
        pool = ds.train.index[ds.train["label"] == label].tolist()
        if len(pool) < k:
            raise DataError(f"the train split has only {len(pool)} sentences of {ds.labels[label]!r}")
        demos += [(ds.train.at[i, "text"], label) for i in rng.sample(pool, k)]
    if order == "shuffle":
        rng.shuffle(demos)
    return demos


def sample_test(ds: Dataset, n: int, seed: int = 0, balanced: bool = True) -> list[tuple[str, int]]:
    """``n`` test sentences, balanced over labels by default (seeded)."""
    rng = random.Random(seed + 10_007)
    if not balanced:
        idx = rng.sample(range(len(ds.test)), min(n, len(ds.test)))
        return [(ds.test.at[i, "text"], int(ds.test.at[i, "label"])) for i in idx]
    per = n // len(ds.labels)
    rows = []
    for label in range(len(ds.labels)):
        pool = ds.test.index[ds.test["label"] == label].tolist()
        rows += [(ds.test.at[i, "text"], label) for i in rng.sample(pool, min(per, len(pool)))]
    rng.shuffle(rows)
    return rows
