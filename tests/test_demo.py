"""The end-to-end demo as `make demo` runs it (minutes on CPU, so `slow`)."""

import pytest

from mmreward.demo import main


@pytest.mark.slow
def test_demo_writes_a_report_with_every_section(tmp_path):
    report = main(["--out", str(tmp_path / "demo")]).read_text()
    for section in ("Synthetic preference data", "BaseReward", "RewardDance",
                    "Evaluation on the held-out synthetic video pairs", "VLM-RM"):
        assert section in report
    assert (tmp_path / "demo" / "basereward_video" / "manifest.json").exists()
    assert (tmp_path / "demo" / "eval" / "clip_baseline" / "metrics.json").exists()
