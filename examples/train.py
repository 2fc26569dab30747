"""Train a clause-risk classifier (logistic regression, plain Python) on the job's dataset.

Reads the platform's job environment: AICLOUD_DATASET_DIR, AICLOUD_OUTPUT_DIR,
AICLOUD_CHECKPOINT_DIR, AICLOUD_METRICS_FILE and AICLOUD_PARAM_* (epochs, lr, seed, and
feature_names: the names the saved model asks its callers for, default the dataset's columns).
Checkpoints every epoch and resumes from the last one; on SIGTERM it checkpoints and exits.
Metrics go to the metrics file, and to MLflow too with ``--param tracking=mlflow`` (the platform
points MLFLOW_TRACKING_URI at the job's own store and attaches the run to the model version).
"""

import csv
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

FEATURES = ["clause_words", "citations", "has_indemnity", "has_liability_cap"]


def env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name, default))


def load(dataset: Path) -> list[tuple[list[float], int]]:
    rows = []
    for path in sorted(dataset.glob("*.csv")):
        with path.open() as handle:
            for record in csv.DictReader(handle):
                x = [float(record[f]) for f in FEATURES]
                x[0] /= 100.0  # words in hundreds, so one learning rate suits every feature
                rows.append((x, int(record["flagged"])))
    if not rows:
        sys.exit(f"no CSV rows under {dataset}")
    return rows


def predict(w: list[float], x: list[float]) -> float:
    z = w[0] + sum(wi * xi for wi, xi in zip(w[1:], x, strict=True))
    return 1 / (1 + math.exp(-max(min(z, 30), -30)))


def evaluate(w: list[float], rows: list[tuple[list[float], int]]) -> tuple[float, float]:
    loss = correct = 0.0
    for x, y in rows:
        p = min(max(predict(w, x), 1e-12), 1 - 1e-12)
        loss -= math.log(p) if y else math.log(1 - p)
        correct += (p >= 0.5) == bool(y)
    return loss / len(rows), correct / len(rows)


def main() -> None:
    epochs = int(os.environ.get("AICLOUD_PARAM_EPOCHS", "20"))
    lr = float(os.environ.get("AICLOUD_PARAM_LR", "0.1"))
    pause = float(os.environ.get("AICLOUD_PARAM_EPOCH_PAUSE", "0"))  # to watch it train
    rng = random.Random(int(os.environ.get("AICLOUD_PARAM_SEED", "0")))
    rows = load(env_path("AICLOUD_DATASET_DIR", "examples/datasets/projects/legal-rag/datasets/v2"))
    rng.shuffle(rows)
    split = int(len(rows) * 0.8)
    train, test = rows[:split], rows[split:]
    out = env_path("AICLOUD_OUTPUT_DIR", "output")
    ckpt = env_path("AICLOUD_CHECKPOINT_DIR", "checkpoints") / "checkpoint.json"
    metrics = env_path("AICLOUD_METRICS_FILE", "metrics.jsonl")
    for path in (out, ckpt.parent, metrics.parent):
        path.mkdir(parents=True, exist_ok=True)

    mlflow = start_tracking({"epochs": epochs, "lr": lr, "seed": os.environ.get("AICLOUD_PARAM_SEED", "0")})
    w, start = [0.0] * (len(FEATURES) + 1), 0
    if ckpt.exists():
        state = json.loads(ckpt.read_text())
        w, start = state["weights"], state["epoch"]
        print(f"resuming from checkpoint at epoch {start}", flush=True)

    def save(epoch: int) -> None:
        tmp = ckpt.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch": epoch, "weights": w}))
        tmp.replace(ckpt)

    state = {"epoch": start}

    def on_term(*_: object) -> None:
        save(state["epoch"])
        print(f"SIGTERM: checkpoint saved at epoch {state['epoch']}", flush=True)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    for epoch in range(start + 1, epochs + 1):
        for x, y in train:
            error = predict(w, x) - y
            w[0] -= lr * error
            for i, xi in enumerate(x):
                w[i + 1] -= lr * error * xi
        loss, accuracy = evaluate(w, test)
        with metrics.open("a") as handle:
            handle.write(json.dumps({"step": epoch, "loss": round(loss, 5),
                                     "accuracy": round(accuracy, 5)}) + "\n")
        if mlflow is not None:
            mlflow.log_metrics({"loss": loss, "accuracy": accuracy}, step=epoch)
        state["epoch"] = epoch
        save(epoch)
        print(f"epoch {epoch}/{epochs} loss={loss:.4f} accuracy={accuracy:.3f}", flush=True)
        time.sleep(pause)

    names = os.environ.get("AICLOUD_PARAM_FEATURE_NAMES", ",".join(FEATURES)).split(",")
    if len(names) != len(FEATURES):
        sys.exit(f"feature_names needs {len(FEATURES)} names, got {names}")
    (out / "model.json").write_text(json.dumps(
        {"kind": "logistic-regression", "features": names, "weights": w,
         "scaling": {names[0]: 0.01}}, indent=2))
    print(f"saved {out / 'model.json'}", flush=True)
    if mlflow is not None:
        mlflow.end_run()


def start_tracking(params: dict[str, object]):  # type: ignore[no-untyped-def]
    """The mlflow module with a run started, when the job was asked to track with MLflow."""
    if os.environ.get("AICLOUD_PARAM_TRACKING") != "mlflow":
        return None
    import mlflow

    mlflow.start_run()
    mlflow.log_params(params)
    return mlflow


if __name__ == "__main__":
    main()
