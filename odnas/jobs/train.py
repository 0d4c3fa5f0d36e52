"""Training with PyTorch Lightning on CPU: one LightningModule and ``fit``.

Each epoch logs ``train_loss``, ``val_loss`` and ``val_acc`` to TensorBoard and
appends the same figures to ``progress.jsonl`` in the trial dir, which the driver
reads while the job runs (learning curves for early stopping).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from odnas.data import DataSplit
from odnas.errors import NonFiniteLossError




class Classifier(pl.LightningModule):
    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = self.loss(self.model(x), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} at epoch {self.current_epoch}")
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        logits = self.model(x)
        self.log("val_loss", self.loss(logits, y), on_epoch=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class _FirstStep(pl.Callback):
    """When the first training batch starts (the end of a job's start-up)."""

    at: float | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.at is None:
            self.at = time.time()


class _Progress(pl.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, module) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        rec = {"epoch": trainer.current_epoch + 1, "val_acc": m.get("val_acc"),
               "val_loss": m.get("val_loss"), "train_loss": m.get("train_loss"), "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def _trainer(epochs: int, trial_dir: Path, callbacks: list) -> pl.Trainer:
    from pytorch_lightning.loggers import TensorBoardLogger

    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True,
        logger=TensorBoardLogger(str(trial_dir), name="tensorboard", version=""),
        callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )


def fit(model: nn.Module, data: DataSplit, lr: float, epochs: int, batch_size: int,
        trial_dir: str | Path, seed: int = 0, hparams: dict[str, Any] | None = None,
        costs: dict[str, float] | None = None) -> dict[str, Any]:
    """Train ``model`` and return the final validation figures. ``hparams`` (the trial's
    parameters) and ``costs`` (the cost lane's figures) go to TensorBoard's HParams view
    with the final ``val_acc``, so ``tensorboard --logdir RUN/trials`` compares trials."""
    trial_dir = Path(trial_dir)
    pl.seed_everything(seed, workers=True, verbose=False)
    tr = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    va = TensorDataset(torch.from_numpy(data.x_val), torch.from_numpy(data.y_val))
    gen = torch.Generator().manual_seed(seed)
    module = Classifier(model, lr)
    first = _FirstStep()
    trainer = _trainer(epochs, trial_dir, [_Progress(trial_dir / "progress.jsonl"), first])
    t0 = time.time()
    trainer.fit(module, DataLoader(tr, batch_size=batch_size, shuffle=True, generator=gen),
                DataLoader(va, batch_size=1024))
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if not all(math.isfinite(v) for v in m.values()):
        raise NonFiniteLossError(f"non-finite metrics after training: {m}")
    if hparams is not None:
        shown = {f"hp/{k}": float(v) for k, v in {**(costs or {}), "val_acc": m["val_acc"]}.items()}
        trainer.logger.log_hyperparams({k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                        for k, v in hparams.items()}, metrics=shown)
        trainer.logger.finalize("success")
    return {"val_acc": m["val_acc"], "val_loss": m["val_loss"], "epochs": epochs,
            "train_time_s": round(time.time() - t0, 3), "first_step_at": first.at}


def warm_up(data: DataSplit, scratch: str | Path) -> None:
    """One tiny fit (a linear model on a few samples, logs into ``scratch``): a warm
    worker runs it once, before it forks, so that Lightning's and TensorBoard's lazy
    imports and first-use set-up are paid once, not per trial. It does not go through
    ``fit`` and trains nothing anyone keeps."""
    x, y = torch.from_numpy(data.x_train[:64]), torch.from_numpy(data.y_train[:64])
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(x[0].numel()), int(data.num_classes)))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    _trainer(1, Path(scratch), [_Progress(Path(scratch) / "progress.jsonl")]).fit(
        Classifier(model, 1e-3), loader, loader)
