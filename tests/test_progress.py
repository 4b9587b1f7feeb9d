"""Progress for log files: plain status lines at a fixed interval when the stream is not a terminal."""

from __future__ import annotations

import io
import re

from dfgan import progress
from dfgan.experiment import resolve_spec
from dfgan.progress import StatusLines, format_seconds, progress_bar, progress_iter
from dfgan.tracking import Tracker
from dfgan.train.loop import train
from tests.conftest import tiny_overrides


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_lines_at_the_interval_with_rate_and_eta():
    out, clock = io.StringIO(), FakeClock()
    bar = StatusLines(100, "train full", unit="step", every_s=30, stream=out, clock=clock)
    for _ in range(10):  # 10 steps in 20 s: under the interval, no line
        clock.t += 2
        bar.set_postfix(loss_d="0.512", loss_g="1.234")
        bar.update()
    assert out.getvalue().count("\n") == 1  # only the opening line
    for _ in range(10):  # 10 more: 40 s since the start, one status line
        clock.t += 2
        bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("train full: 0/100 steps (0.0%)")
    assert lines[1] == ("train full: 15/100 steps (15.0%) | loss_d 0.512, loss_g 1.234 | 0.5 steps/s | "
                        "30s elapsed, ETA 2m50s")
    for _ in range(20):
        clock.t += 2
        bar.update()
    assert "\r" not in out.getvalue()
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("train full: 40/100 steps (40.0%)")
    assert lines[-1].endswith("| 0.5 steps/s | 1m20s elapsed, done")


def test_progress_bar_picks_by_stream():
    assert isinstance(progress_bar(5, "x", stream=io.StringIO()), StatusLines)
    tty = progress_bar(5, "x", stream=Terminal())
    assert not isinstance(tty, StatusLines) and hasattr(tty, "n")  # a tqdm bar
    tty.close()
    quiet = io.StringIO()
    bar = progress_bar(5, "x", stream=quiet, enabled=False)
    bar.update(), bar.set_postfix(a=1), bar.close()
    assert quiet.getvalue() == ""
    out = io.StringIO()
    assert list(progress_iter(iter(range(3)), 3, "items", stream=out, every_s=0)) == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("items: 3/3 its (100.0%)")
    assert format_seconds(3725) == "1h02m" and format_seconds(61) == "1m01s" and format_seconds(float("nan")) == "?"


def test_training_run_writes_status_lines_to_a_log(tmp_path, capsys):
    """A run whose stderr is no terminal (pytest's capture) logs plain lines for pretraining, training and
    evaluation, at ``train.status_every_s``; the interval is restored afterwards."""
    spec = resolve_spec("full", overrides=tiny_overrides(tmp_path, **{"train.status_every_s": 1e-6,
                                                                      "model.text_encoder.pretrain_steps": 3}))
    before = progress.set_interval(progress.DEFAULT_EVERY_S)
    train(spec, progress=True, tracker=Tracker(enabled=False))
    assert progress.set_interval(before) == progress.DEFAULT_EVERY_S
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if " | " in x]
    assert any(re.match(r"DAMSM pretraining: 3/3 steps \(100\.0%\) \| loss \d", x) for x in lines), err[-2000:]
    steps = [x for x in lines if x.startswith("train full: ")]
    assert [int(re.match(r"train full: (\d+)/4 steps", x).group(1)) for x in steps] == [0, 1, 2, 3, 4, 4]
    assert "loss_d " in steps[2] and "ETA" in steps[2] and steps[-1].endswith("elapsed, done")
    assert any(x.startswith("generate: 32/32 imgs") for x in lines)
    assert any(x.startswith("attribute classifier: ") for x in lines)
    assert any(x.startswith("reference attr") for x in lines)  # the classifier's features of the test images
    assert any(x.startswith("builtin data (32px): 96/96 imgs") for x in lines)  # train+test+val, generated once
