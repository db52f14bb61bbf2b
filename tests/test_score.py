"""One-call scoring: `RewardModel.reward` and `python -m mmreward.score`."""

import json

import numpy as np
import pytest
from PIL import Image

from mmreward.data.media import MediaError, write_video
from mmreward.model import RewardInputError, RewardModel
from mmreward.cli import run
from mmreward.score import main as score_main

PROMPT = "two red circles"


@pytest.fixture(scope="module")
def checkpoint(scalar_checkpoint):
    """tests/conftest.py's scalar model (VQ, TA; overall = their sum), normalising by default."""
    return scalar_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)).save(out / "a.png")
    write_video(out / "b.mp4", rng.integers(0, 256, (8, 56, 84, 3), dtype=np.uint8), fps=4.0)
    Image.fromarray(rng.integers(0, 256, (71, 97, 3), dtype=np.uint8)).save(out / "c.jpg")  # resized for the model
    return [str(out / "a.png"), str(out / "b.mp4"), str(out / "c.jpg")]


def test_reward_batches_normalises_and_sums(checkpoint, files):
    model = RewardModel.from_pretrained(checkpoint)
    raw = model.reward(files, PROMPT, normalize=False, batch_size=1)
    together = model.reward(files, [PROMPT] * 3, normalize=False, batch_size=3)
    for one, batched in zip(raw, together):
        assert set(one) == {"VQ", "TA", "overall"} and batched == pytest.approx(one, abs=1e-5)
        assert one["overall"] == pytest.approx(one["VQ"] + one["TA"])
    assert len({round(r["VQ"], 6) for r in raw}) == 3  # three different items, three rewards
    normalised = model.reward(files, PROMPT)  # the checkpoint's default
    for r, n in zip(raw, normalised):
        # (r - mean) / std; raw came from one-item batches, so batching noise (1e-6) is scaled by 1 / std
        assert n["VQ"] == pytest.approx((r["VQ"] - 0.5) / 2.0, abs=1e-4)
        assert n["TA"] == pytest.approx((r["TA"] + 1.0) / 0.25, abs=1e-4)
        assert n["overall"] == pytest.approx(n["VQ"] + n["TA"])


def test_unreadable_items_are_named_and_the_others_scored(checkpoint, files, tmp_path):
    model = RewardModel.from_pretrained(checkpoint)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    items = [files[0], str(tmp_path / "missing.png"), files[1], str(broken)]
    with pytest.raises(RewardInputError) as caught:
        model.reward(items, PROMPT)
    err = caught.value
    assert sorted(err.errors) == [1, 3] and all(isinstance(e, MediaError) for e in err.errors.values())
    assert "missing.png" in str(err) and "broken.mp4" in str(err)
    assert err.rewards[1] is None and err.rewards[3] is None
    good = model.reward([files[0], files[1]], PROMPT)
    assert err.rewards[0] == pytest.approx(good[0], abs=1e-5) and err.rewards[2] == pytest.approx(good[1], abs=1e-5)
    with pytest.raises(ValueError, match="2 prompts for 3 media items"):
        model.reward(files, [PROMPT, PROMPT])


def test_cli_table_json_and_exit_codes(checkpoint, files, tmp_path, capsys):
    assert score_main(["--model", str(checkpoint), "--prompt", PROMPT, *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "VQ", "TA", "overall"] and len(lines) == 4
    expected = RewardModel.from_pretrained(checkpoint).reward(files, PROMPT)
    assert [float(x) for x in lines[2].split()[1:]] == pytest.approx([expected[1][k] for k in ("VQ", "TA", "overall")],
                                                                     abs=1e-4)
    assert score_main(["--model", str(checkpoint), "--prompt", PROMPT, "--raw", "--json", files[0]]) == 0
    row = json.loads(capsys.readouterr().out)
    raw = RewardModel.from_pretrained(checkpoint).reward(files[:1], PROMPT, normalize=False)[0]
    assert row["file"] == files[0] and {k: row[k] for k in raw} == pytest.approx(raw, abs=1e-5)
    missing = str(tmp_path / "nope.mp4")
    assert score_main(["--model", str(checkpoint), "--prompt", PROMPT, files[0], missing]) == 1
    captured = capsys.readouterr()
    assert "error" in captured.out.splitlines()[2] and f"error: {missing}: {missing}: file not found" in captured.err
    for model_dir, message in ((tmp_path, "neither a reward model checkpoint nor a VideoAlign one"),
                               (tmp_path / "absent", "no such checkpoint folder")):
        with pytest.raises(SystemExit) as exited:
            run(score_main, ["--model", str(model_dir), "--prompt", PROMPT, files[0]])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_reward_equals_what_evaluation_scores(checkpoint, files):
    """`reward` decodes media as evaluation does (images straight to the processor's size): same rewards."""
    from mmreward.data.records import PreferenceRecord, Side
    from mmreward.evaluation.scorers import RewardModelScorer

    model = RewardModel.from_pretrained(checkpoint)
    scorer = RewardModelScorer(model)
    record = PreferenceRecord("r", PROMPT, Side(image=files[2]), Side(video=files[1]), {"overall": "a"})
    (pair,) = scorer.score(scorer.collate([scorer.prepare(record)]))
    image, video = model.reward([files[2], files[1]], PROMPT)
    assert pair.score_a == pytest.approx(image, abs=1e-5) and pair.score_b == pytest.approx(video, abs=1e-5)
