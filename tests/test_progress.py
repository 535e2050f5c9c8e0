"""Progress on stderr: periodic one-line reports (with time left) where stderr is not a terminal, nothing when not asked."""
from __future__ import annotations

import io
import subprocess
import sys

from qmia_fast import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_come_early_then_periodically_with_rate_and_time_left():
    out, clock = io.StringIO(), Clock()
    reporter = progress.LineReporter(1000, "scoring 1000 images (loss)", every=30, stream=out, clock=clock)
    clock.now = 2.0
    reporter.update(10)  # before the first line is due: nothing
    assert out.getvalue() == ""
    clock.now = 6.0
    reporter.update(50)
    first = out.getvalue().splitlines()
    assert first == ["scoring 1000 images (loss): 60/1000 (6%), 10/s, about 1 min 34 s left"]
    clock.now = 20.0
    reporter.update(100)  # within 30 s of the last line
    assert len(out.getvalue().splitlines()) == 1
    clock.now = 40.0
    reporter.update(240)
    assert out.getvalue().splitlines()[-1].startswith("scoring 1000 images (loss): 400/1000 (40%)")
    clock.now = 100.0
    reporter.update(600)
    reporter.close()
    assert out.getvalue().splitlines()[-1] == "scoring 1000 images (loss): 1000/1000 (100%), 10/s, done in 1 min 40 s"


def test_disabled_progress_is_silent_and_durations_read_naturally():
    with progress.progress_bar(False, 10, "x") as bar:
        bar.update(10)
    assert progress.format_duration(59.4) == "59 s"
    assert progress.format_duration(3725) == "1 h 02 min"


def test_a_scoring_run_into_a_log_file_reports_progress_lines(tmp_path):
    """What a user sees in a batch job's log: progress lines, not one line and then minutes of silence."""
    code = ("import qmia_fast.progress as p; p.FIRST_LINE_S = 0.0; p.LINE_EVERY_S = 0.0\n"
            "import qmia_fast as qf\n"
            "from model_helpers import random_images, tiny_model\n"
            "qf.score(tiny_model(), random_images(40), method='loss', precision='fp32', unet_batch=8, progress=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).parent))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("scoring 40 images")]
    assert len(lines) >= 2 and "left" in lines[0] and lines[-1].endswith(" s") and "done in" in lines[-1]


def test_training_progress_reaches_a_log_with_the_running_loss_one_report_per_stage(monkeypatch, capsys):
    """train-target's per-step callback: periodic lines in a log (not a terminal), each stage its own, resumed
    stages counting the steps left after their checkpoint, the smoothed loss after the counts."""
    monkeypatch.setattr(progress, "FIRST_LINE_S", 0.0)
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    bar = progress.StepProgress()
    for step in range(1, 4):
        bar(step, 3, 0.5, "vae")
    for step in range(6, 11):  # resumed at step 6 of 10
        bar(step, 10, 1.0 if step == 6 else 0.0, "denoiser")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    vae = [line for line in lines if line.startswith("training vae:")]
    denoiser = [line for line in lines if line.startswith("training denoiser (resumed at step 6 of 10):")]
    assert vae[-1].startswith("training vae: 3/3 (100%)") and "done in" in vae[-1] and vae[-1].endswith("loss 0.5000")
    assert denoiser[0].startswith("training denoiser (resumed at step 6 of 10): 1/5 (20%)")
    assert denoiser[0].endswith("; loss 1.0000")
    assert denoiser[-1].startswith("training denoiser (resumed at step 6 of 10): 5/5 (100%)")
    assert denoiser[-1].endswith(f"loss {0.98 ** 4:.4f}")


def test_disabled_training_progress_writes_nothing(capsys):
    bar = progress.StepProgress(enabled=False)
    bar(1, 2, 0.1)
    bar(2, 2, 0.1)
    bar.close()
    assert capsys.readouterr().err == ""
