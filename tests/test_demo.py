"""`mirasol demo` end to end at a few steps: four runs trained and evaluated, the report
and its plots written, the real clip decoded and answered."""

import pytest

from mirasol.cli import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    pytest.importorskip("av")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "6", "--ablation-steps", "3",
                 "--test-size", "12", "--live-streams", "2", "--live-episodes", "2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for run in ("full", "text-only", "video-only", "audio-only", "chance"):
        assert run in printed
    live = printed.split("\nLive: 2 streams of 2 held-out clips")[1]
    for run in ("full", "text-only", "video-only", "audio-only", "full, no window"):
        assert f"\n{run} " in live
    assert "real clip bigbuckbunny.mp4" in printed
    report = (out / "report.md").read_text()
    assert "colour_during_tone" in report and "![loss](loss.png)" in report
    assert "- live (" in report and "stream state" in report
    assert "Live: 2 streams of 2 held-out clips" in report and "full, no window" in report
    assert (out / "loss.png").stat().st_size > 1000 and (out / "accuracy.png").exists()
    assert (out / "model" / "model.safetensors").exists()
    for run in ("full", "text-only", "video-only", "audio-only"):
        assert (out / run / "metrics.jsonl").exists()
    # the saved model answers through `mirasol ask`
    from mirasol.data import sample_clip_path

    assert main(["ask", str(sample_clip_path()), "colour during high tone?", "--checkpoint",
                 str(out / "model"), "--frames", "8"]) == 0
    # the answer of a 6-step model may be empty; the timings line says the path ran
    assert "8 frames (2.0 s) decoded in" in capsys.readouterr().err
