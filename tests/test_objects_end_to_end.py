"""Issue 13, done when: a model trained from object-id masks of touching discs counts them within 5 % and finds
them with object F1 >= 0.9 at IoU 0.5, touching pairs split; with `--split off` the same pairs merge."""

from __future__ import annotations

import numpy as np
import tifffile
from helpers import cli, ok, read_values, write_label_dataset


def matched(truth: np.ndarray, pred: np.ndarray) -> dict[int, int]:
    """True object id -> the predicted object with IoU > 0.5 (unique when it exists), by brute force."""
    found = {}
    for t in range(1, int(truth.max()) + 1):
        for p in range(1, int(pred.max()) + 1):
            inter = np.sum((truth == t) & (pred == p))
            if inter and inter / np.sum((truth == t) | (pred == p)) > 0.5:
                found[t] = p
    return found


def touching_pairs(ids: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1], ids[1:])):
        edge = (a != b) & (a != 0) & (b != 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[edge].tolist(), b[edge].tolist())}
    return pairs


def scores(out, test) -> tuple[int, int, int, int, int]:
    """(true objects, predicted objects, matched, touching pairs, pairs whose two discs lie in one predicted object)."""
    true_count = pred_count = hits = pairs = merged = 0
    for mask in sorted((test / "masks").iterdir()):
        truth = read_values(mask)
        pred = tifffile.imread(out / f"{mask.stem}_instances.tif")
        found = matched(truth, pred)
        true_count, pred_count, hits = true_count + int(truth.max()), pred_count + len(np.unique(pred)) - 1, hits + len(found)
        for a, b in touching_pairs(truth):
            pairs += 1
            owner_a = np.bincount(pred[truth == a]).argmax()
            merged += bool(owner_a) and owner_a == np.bincount(pred[truth == b]).argmax()
    return true_count, pred_count, hits, pairs, merged


def test_a_model_trained_on_object_ids_counts_and_splits_touching_discs(tmp_path):
    train = write_label_dataset(tmp_path / "train", count=24, seed=0, size=(96, 96))
    test = write_label_dataset(tmp_path / "test", count=8, seed=1, size=(96, 96))
    run = tmp_path / "run"
    ok(cli("train", train, "-o", run, "--mask-mode", "instances", "--border-weight", "--encoder", "resnet18",
           "--decoder-width", "128", "--crop", "96", "--epochs", "16", "--samples-per-epoch", "64", "--batch-size", "8",
           "--val-split", "0", "--augment", "light", "--seed", "0", "--no-plan", "--quiet"))

    ok(cli("predict", run, test / "images", "-o", tmp_path / "auto", "--save", "instances", "--quiet"))
    true_count, pred_count, hits, pairs, merged = scores(tmp_path / "auto", test)
    assert abs(pred_count - true_count) <= 0.05 * true_count, (pred_count, true_count)
    precision, recall = hits / pred_count, hits / true_count
    assert 2 * precision * recall / (precision + recall) >= 0.9, (hits, pred_count, true_count)
    assert pairs >= 20 and merged <= 0.1 * pairs, (merged, pairs)

    ok(cli("predict", run, test / "images", "-o", tmp_path / "off", "--save", "instances", "--split", "off", "--quiet"))
    _, merged_count, _, _, merged_off = scores(tmp_path / "off", test)
    assert merged_off >= 0.9 * pairs, (merged_off, pairs)  # the same pairs, one object each without splitting
    assert merged_count < pred_count - 0.8 * pairs
