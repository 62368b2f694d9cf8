"""``cnnlab train`` and ``cnnlab lr-find``: a config from the options, the run, and its last lines."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["cmd_lr_find", "cmd_train"]


def cmd_train(args) -> int:
    import dataclasses

    from cnnlab.recipes import TrainConfig, resolve_config, run_training
    from cnnlab.recipes.budget import process_seconds
    from cnnlab.training.baseline import read_baseline

    if args.resume and args.resume != "auto":
        summary = run_training(None, resume=args.resume)
    elif args.replay:
        from cnnlab.recipes import read_run_config

        # The recorded run's settings, without its clock; only where the files go and the bar may differ.
        config = dataclasses.replace(read_run_config(args.replay), budget=None, steps=None, replay=args.replay,
                                     out=args.out, progress=not args.no_progress)
        summary = run_training(config, spent=process_seconds())
        summary["baseline"] = read_baseline(args.replay)  # the same split as the recorded run's: its baseline
    else:
        # Every TrainConfig field has an option of the same name (``progress`` is ``--no-progress``).
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
        given.update(_augment_fields(args.augment), lr=None if args.lr == "auto" else args.lr)
        if given["model"] is None:
            del given["model"]
        config = TrainConfig(**given, progress=not args.no_progress)
        if args.images and args.model is None and args.recipe is None:
            from cnnlab.recipes.auto import run_auto

            summary = run_auto(config, spent=process_seconds())  # the automatic recipe for your own images
        else:
            config = resolve_config(config, args.recipe)
            if args.lr == "auto":
                from cnnlab.recipes.auto_lr import find_lr

                config = dataclasses.replace(config, lr=find_lr(config))
            # --resume auto: or the continuation of the run in --out (cnnlab.recipes.resume); a --budget counts
            # the start-up too.
            summary = run_training(config, resume=args.resume, spent=process_seconds())
    if summary["test_accuracy"] is None:  # a non-zero rank under torchrun
        return 0
    _print_summary(summary)
    if args.report:
        from cnnlab.analysis.report import write_report

        print(f"report: {write_report(summary['run_dir'])}")
    return 0


def _print_summary(summary: dict) -> None:
    """The run's last lines: its test accuracy and files, the linear baseline beside it, a chance warning."""
    from cnnlab.training.baseline import describe_baseline, read_baseline

    if summary["finished_already"]:
        print(f"run {summary['run_dir']} had already finished all {summary['config'].epochs} epochs; "
              "nothing to do")
    print(f"test accuracy {summary['test_accuracy']:.4f} on {summary['test_count']:,} images "
          f"({Path(summary['checkpoint']).name}, fp32) after {summary['steps']:,} steps; total time "
          f"{summary['seconds']:.1f} s; files in "
          f"{summary['run_dir']}/ (metrics.csv, curves.png, last.pt, best.pt)")
    # A resumed automatic run reads the baseline its first start saved in the run folder
    base = summary.get("baseline") or read_baseline(summary["run_dir"])
    if base:
        blend = summary.get("pixel_blend")
        print(describe_baseline(base, summary["test_accuracy"]) +
              (f" (the net blended with a linear classifier on the pixels, weight {blend:g})" if blend else ""))
    if summary.get("chance_warning"):
        print(summary["chance_warning"], file=sys.stderr)


def _augment_fields(choice: str | None) -> dict:
    """``--augment [crop|flip|crop+flip]`` / ``--no-augment`` as TrainConfig's ``augment`` and ``flip``."""
    if choice is None:
        return {"augment": None, "flip": None}
    if choice == "none":
        return {"augment": False, "flip": None}
    return {"augment": True, "flip": choice != "crop"}


def cmd_lr_find(args) -> int:
    from cnnlab.recipes import TrainConfig
    from cnnlab.recipes.auto import LR_TEST_STEPS, MAX_PEAK_LR, lr_find_for, peak_lr
    from cnnlab.visual.plotting import plot_lr_find

    config = TrainConfig(**{k: v for k, v in dict(
        model=args.model, images=args.images, batch_size=args.batch_size, optimizer=args.optimizer,
        data_dir=args.data_dir, num_train=args.num_train, device=args.device, seed=args.seed).items()
        if v is not None}, progress=False)
    automatic = args.images is not None and args.model is None
    steps = args.steps or (LR_TEST_STEPS if automatic else 100)
    result, config = lr_find_for(config, automatic=automatic, steps=steps)
    peak = peak_lr(result) if automatic else None
    out = plot_lr_find(result.lrs, result.losses, result.smoothed, result.suggestion, args.out, result.minimum,
                       peak=peak)
    stopped = " (stopped: the loss exploded)" if result.stopped_early else ""
    print(f"{config.model}, {config.optimizer}, batch {config.batch_size}: {len(result.lrs)} steps from "
          f"{result.lrs[0]:.2g} to {result.lrs[-1]:.2g}{stopped}; lowest smoothed loss at lr {result.minimum:.3g}, "
          f"steepest descent at {result.steepest:.3g}")
    print(f"suggested lr {result.suggestion:.3g} (the larger of the steepest descent and a tenth of the minimum's "
          f"lr); plot: {out}")
    if peak is not None:
        same = "the rate `cnnlab train --images DIR` takes at this seed" if steps == LR_TEST_STEPS else \
            f"`cnnlab train --images DIR` runs its own test of {LR_TEST_STEPS} steps"
        print(f"the automatic recipe's peak lr on this curve: {peak:.3g} (half the rate where 90% of the smoothed "
              f"loss's fall is done, at most {MAX_PEAK_LR:g}; {same})")
    return 0
