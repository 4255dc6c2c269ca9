"""A sweep's children side by side: the comparison sheet (their test confusion matrices and
predictions on the same first test images, ordered as the choice ranks them, the chosen one
marked) and the per-class test accuracy of every finished child, from what each child logged
(``eval/test_predictions.json`` and ``eval/test_samples.jpg``, rps.training.outputs).

Both show the test split, which is reported and never chosen on: the order is the choice's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from rps.search import summary
from rps.tracking.choice import download
from rps.training import plots
from rps.training.evaluate import confusion_matrix
from rps.training.outcome import OBJECTIVE, PREDICTIONS, SAMPLES, THUMBNAIL

MAX_ROWS = 12  # children drawn in the sheet (the best ones); the table lists them all


def ranked(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished rows, best first, as :func:`rps.search.summary.choose_best` ranks them."""
    finished = [r for r in table if r["status"] == "FINISHED" and r[OBJECTIVE] is not None]
    return sorted(finished, key=summary.rank_key)  # (a stable sort: ties stay in start order)


def _thumbnails(path: Optional[Path], count: int) -> list[np.ndarray]:
    if path is None or count == 0:
        return []
    from PIL import Image

    with Image.open(path) as strip:
        pixels = np.asarray(strip.convert("RGB"))
    return [pixels[:, i * THUMBNAIL:(i + 1) * THUMBNAIL] for i in range(min(count, pixels.shape[1] // THUMBNAIL))]


def child_record(run_id: str, into: Path, with_images: bool) -> Optional[dict[str, Any]]:
    """What a child logged about its test predictions (and its sample images), or None."""
    path = download(run_id, PREDICTIONS, into / run_id)
    if path is None:
        return None
    record = json.loads(path.read_text())
    if with_images:
        record["thumbnails"] = _thumbnails(download(run_id, SAMPLES, into / run_id), record.get("samples", 0))
    return record


def per_class_row(row: dict[str, Any], record: dict[str, Any], rank: int, chosen_id: str) -> dict[str, Any]:
    """One child's test accuracy per class (the share of each class's test images it got right)."""
    cm = confusion_matrix(np.array(record["labels"]), np.array(record["predicted"]), len(record["class_names"]))
    totals = cm.sum(axis=1)
    out = {"rank": rank, "run_name": row["run_name"], "chosen": "yes" if row["run_id"] == chosen_id else "",
           OBJECTIVE: row[OBJECTIVE], "test_accuracy": row["test_accuracy"]}
    out |= {f"test_accuracy_{name}": (float(cm[c, c] / totals[c]) if totals[c] else None)
            for c, name in enumerate(record["class_names"])}
    return out | {"run_id": row["run_id"]}


def sheet_row(row: dict[str, Any], record: dict[str, Any], chosen_id: str) -> dict[str, Any]:
    n = len(record.get("thumbnails", []))
    cm = confusion_matrix(np.array(record["labels"]), np.array(record["predicted"]), len(record["class_names"]))
    return {"label": row["run_name"], "objective": row[OBJECTIVE], "chosen": row["run_id"] == chosen_id,
            "confusion": cm, "thumbnails": record.get("thumbnails", []), "labels": record["labels"][:n],
            "predicted": record["predicted"][:n], "confidence": record["confidence"][:n]}


def compare_children(table: list[dict[str, Any]], chosen_id: str, title: str):
    """(the comparison sheet or None, the per-class table): every finished child that logged its
    predictions, best first; the sheet draws the first :data:`MAX_ROWS`."""
    rows, per_class, class_names, digests = [], [], None, set()
    with tempfile.TemporaryDirectory() as tmp:
        for rank, row in enumerate(ranked(table), start=1):
            record = child_record(row["run_id"], Path(tmp), with_images=len(rows) < MAX_ROWS)
            if record is None:  # logged by an older rps, or its artifacts are gone
                continue
            class_names = class_names or record["class_names"]
            per_class.append(per_class_row(row, record, rank, chosen_id))
            if len(rows) < MAX_ROWS:
                rows.append(sheet_row(row, record, chosen_id))
                digests.add(record.get("test_digest"))
    if not rows:
        return None, per_class
    same = "the same test images in every row" if len(digests) == 1 else "each row its own test split (they differ)"
    shown = f"the best {len(rows)} of {len(per_class)}" if len(per_class) > len(rows) else f"{len(rows)} children"
    heading = (f"{title}\n{shown}, best first by {OBJECTIVE} (validation); test confusion matrices and predictions "
               f"({same}), reported only")
    return plots.comparison_sheet(rows, class_names, heading), per_class
