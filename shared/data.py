"""Data loading: one function for a tiny-world task, a local dataset folder or file, or a hub dataset.

    data = load_data("tiny:string_ops", required_columns=["prompt", "reference"], num_examples=2000)
    data = load_data("path/saved_with_save_to_disk", required_columns=["prompt", "chosen", "rejected"])
    data = load_data("yapeichang/BLEUBERI-Tulu3-50k", split="train", required_columns=["prompt", "reference"])

A missing column fails at once with the columns the dataset does have; so does an id that cannot be loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from huggingface_hub import HfApi

from shared.lm import HUB_TIMEOUT_SECONDS, hub_reachable, offline
from shared.runs import fail
from shared.tasks import get_task

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_data(
    name: str,
    split: str = "train",
    required_columns: Sequence[str] = (),
    num_examples: int | None = None,
    seed: int = 0,
    task_kwargs: dict | None = None,
    shuffle: bool | None = None,
) -> Dataset:
    """A `datasets.Dataset` from `tiny:<task>`, a `save_to_disk` folder, a json/jsonl/csv/parquet file or a hub id."""
    path = Path(name)
    if name.startswith("tiny:"):
        if num_examples is None:
            fail(f"{name}: a tiny-world task needs a number of examples")
        data = get_task(name.split(":", 1)[1], **(task_kwargs or {})).dataset(num_examples, seed=seed, split=split)
    elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        data = load_from_disk(str(path))
    elif path.is_file() or path.is_dir():
        suffix = path.suffix if path.is_file() else ""
        try:
            data = (
                load_dataset(FILE_FORMATS[suffix], data_files=str(path), split="train")
                if suffix in FILE_FORMATS
                else load_dataset(str(path), split=split)
            )
        except Exception as error:
            fail(
                f"cannot read dataset {name!r} ({type(error).__name__}: {error}); use a save_to_disk folder or a "
                f"{'/'.join(FILE_FORMATS)} file"
            )
    else:
        try:
            if not offline():  # offline, the datasets cache answers at once
                if not hub_reachable():
                    raise ConnectionError("the hub is unreachable")
                HfApi().dataset_info(name, timeout=HUB_TIMEOUT_SECONDS)  # a hub that never answers fails here
            data = load_dataset(name, split=split)
        except Exception as error:
            fail(
                f"cannot load dataset {name!r}: not a local folder or file, and the hub copy could not be loaded "
                f"({type(error).__name__}). Save it with save_to_disk where you have network access and pass the "
                f"folder, or run the script without --dataset-name for its offline toy."
            )
    if isinstance(data, DatasetDict):
        if split not in data:
            fail(f"dataset {name!r} has no split {split!r}; it has {list(data)}")
        data = data[split]
    missing = [c for c in required_columns if c not in data.column_names]
    if missing:
        fail(
            f"dataset {name!r} lacks the column(s) {missing}; it has {data.column_names}. Rename them with "
            f"`dataset.rename_column` (the script needs {list(required_columns)})."
        )
    if shuffle is None:
        shuffle = num_examples is not None  # a subset of a real dataset is a random one, not its first rows
    if shuffle and not name.startswith("tiny:") and len(data) > 0:
        data = data.shuffle(seed=seed)
    if num_examples is not None and not name.startswith("tiny:"):
        data = data.select(list(range(min(num_examples, len(data)))))
    return data
