"""The run folder's set-up: a new run in a folder that holds an earlier one starts from none of its files."""

from cnnlab.training.runfolder import RUN_FILES, RunFolder


def _earlier_run(path):
    path.mkdir()
    (path / "config.json").write_text('{"seed": 0}')
    for name in RUN_FILES:
        (path / name).write_bytes(b"the earlier run's")
    (path / "tensorboard").mkdir()
    (path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"the earlier run's")
    (path / "report.html").write_text("the user's")


def test_a_resume_keeps_the_earlier_files_and_a_new_run_removes_only_the_runs_own(tmp_path):
    run = tmp_path / "run"
    _earlier_run(run)
    folder = RunFolder(run).create(None)  # a resume: config.json and the checkpoints stay
    folder.release()
    assert folder.replaced == [] and all((run / name).is_file() for name in RUN_FILES)
    folder = RunFolder(run).create({"seed": 1})
    folder.release()
    assert folder.replaced == [*RUN_FILES, "tensorboard/"]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "report.html"]
    assert (run / "config.json").read_text().strip() == '{\n  "seed": 1\n}'


def test_a_tensorboard_link_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not the run's")
    run = tmp_path / "run"
    run.mkdir()
    (run / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    RunFolder(run).create({"seed": 1}).release()
    assert (elsewhere / "keep").is_file() and (run / "tensorboard").is_symlink()
