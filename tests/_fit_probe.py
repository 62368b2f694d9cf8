"""Test-only: run a script (a seed snippet) unchanged, with ``Trainer.fit`` wrapped to record what it did.

    python tests/_fit_probe.py SCRIPT REPORT_JSON

The script runs as ``__main__`` in this process, as ``python SCRIPT`` would run it, after
``torch.manual_seed(0)``. For every ``fit`` call, REPORT_JSON gets the model's parameters and buffers that
training left bit-identical, how many there are, and the validation loss before and after (evaluated here,
not taken from the trainer's own log).
"""

import json
import runpy
import sys

import torch

from cnnlab.training.evaluation import evaluate
from cnnlab.training.trainer import Trainer

_fit = Trainer.fit
reports = []


def fit(self, model, data, *args, **kwargs):
    initial = {name: t.detach().clone() for name, t in model.state_dict().items()}
    before = evaluate(model, data.val_dataloader())
    history = _fit(self, model, data, *args, **kwargs)
    # The caller's own model object: a trainer that trained a copy would leave it as it was.
    after = evaluate(model, data.val_dataloader(), self.device)
    final = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    reports.append({
        "tensors": sorted(initial),
        "unchanged": sorted(name for name, t in initial.items() if torch.equal(t.cpu(), final[name])),
        "val_loss_before": before.loss,
        "val_loss_after": after.loss,
    })
    with open(REPORT, "w") as f:
        json.dump(reports, f)
    return history


if __name__ == "__main__":
    script, REPORT = sys.argv[1], sys.argv[2]
    Trainer.fit = fit
    # Seeded, so that the test's bound on the loss is checked against the same initial weights every time
    # (unseeded, about 1 draw in 100 starts with a loss already near ln 10).
    torch.manual_seed(0)
    sys.argv = [script]
    runpy.run_path(script, run_name="__main__")
