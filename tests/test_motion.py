"""MovingShapes: the clips (decoded with PyAV), their geometry, captions, answers, `mmt data motion`, `motion:`."""

import collections
import json
import random
import re
from dataclasses import asdict

import numpy as np
import pytest

from multimodaltransformer.cli import main
from multimodaltransformer.data import DataError, motion, read_manifest
from multimodaltransformer.data.shapes import COLORS, NOVEL_PAIRS, SIZES
from multimodaltransformer.data.sources import resolve_source

av = pytest.importorskip("av")


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def motion_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("motion")
    motion.generate(out, split="train", n=24, seed=1, progress=False)
    return out


def test_clips_decode_to_16_frames_of_64x64(motion_dir):
    videos = sorted((motion_dir / "videos").iterdir())
    assert len(videos) == 24 and all(p.suffix == ".mp4" for p in videos)  # no half-written .part left
    for p in videos:
        frames = _decode(p)
        assert len(frames) == motion.FRAMES and all(f.shape == (64, 64, 3) for f in frames)
    with av.open(str(videos[0])) as c:
        assert c.streams.video[0].average_rate == motion.FPS
    info = json.loads((motion_dir / "info.json").read_text())
    assert info == {"dataset": "movingshapes", "version": motion.VERSION, "split": "train", "n": 24, "seed": 1,
                    "questions_per_clip": 3, "frames": 16, "fps": 8}


def _obj(color, shape, motion_, start, end, frame=0):
    return motion.MovingObj(color, shape, "large", motion_, start, end, frame, (0.0, 0.0))


# One clip with every kind of motion, in distinct colours, so each object is found by its colour alone.
HAND = [_obj("red", "circle", "right", (0, 0), (0, 1), 2), _obj("pink", "diamond", "disappears", (1, 0), (1, 0), 9),
        _obj("yellow", "square", "still", (1, 2), (1, 2)), _obj("blue", "square", "up", (2, 1), (1, 1), 5),
        _obj("green", "cross", "appears", (2, 2), (2, 2), 6)]


def _centroid(frame, color):
    """Centre and pixel count of the pixels near `color` (anti-aliased edges and chroma blur fall outside)."""
    near = np.linalg.norm(frame.astype(float) - COLORS[color], axis=-1) < 50
    ys, xs = np.nonzero(near)
    return (xs.mean(), ys.mean(), len(xs)) if len(xs) else (np.nan, np.nan, 0)


@pytest.fixture(scope="module")
def hand_clip(tmp_path_factory):
    plan = motion.ClipPlan(tuple(HAND), (30, 30, 30), tuple(COLORS[o.color] for o in HAND), noise_seed=7)
    path = tmp_path_factory.mktemp("hand") / "clip.mp4"
    motion.write_video(path, motion.frames_of(plan))
    return plan, _decode(path)


def test_decoded_frames_match_the_drawn_ones(hand_clip):
    plan, decoded = hand_clip
    for drawn, got in zip(motion.frames_of(plan), decoded):
        mse = ((np.asarray(drawn, dtype=float) - got) ** 2).mean()
        assert 10 * np.log10(255 ** 2 / mse) > 27  # dB; most of the loss is the pixel noise's colour (4:2:0)


def test_mpeg4_stands_in_where_ffmpeg_lacks_libx264(hand_clip, tmp_path, monkeypatch):
    plan, _ = hand_clip
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    motion.write_video(tmp_path / "clip.mp4", drawn := motion.frames_of(plan))
    with av.open(str(tmp_path / "clip.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
    decoded = _decode(tmp_path / "clip.mp4")
    assert len(decoded) == motion.FRAMES
    assert np.abs(np.asarray(drawn[8], dtype=float) - decoded[8]).mean() < 6


def test_objects_move_as_their_motion_says_in_the_decoded_frames(hand_clip):
    _, frames = hand_clip
    for o in HAND:
        track = np.array([_centroid(f, o.color) for f in frames])  # (FRAMES, 3): x, y, pixels
        for t, (x, y, count) in enumerate(track):
            cx, cy, visible = motion.object_state(o, t)
            assert (count > 100) == visible, (o.name, t)
            if visible:
                assert abs(x - cx) < 1 and abs(y - cy) < 1, (o.name, t, x, y, cx, cy)
    red, blue, yellow = (np.array([_centroid(f, c)[:2] for f in frames]) for c in ("red", "blue", "yellow"))
    assert np.allclose(red[:3], red[0], atol=0.5) and np.allclose(red[10:], red[-1], atol=0.5)  # still before/after
    assert np.all(np.diff(red[2:11, 0]) > 1) and red[-1, 0] - red[0, 0] == pytest.approx(motion.CELL, abs=1)
    assert np.ptp(red[:, 1]) < 0.5  # right: x grows, y stays
    assert np.all(np.diff(blue[5:14, 1]) < -1) and blue[0, 1] - blue[-1, 1] == pytest.approx(motion.CELL, abs=1)
    assert np.ptp(blue[:, 0]) < 0.5  # up: y shrinks, x stays
    assert np.ptp(yellow, axis=0).max() < 0.5


def test_appears_and_disappears():
    green, pink = HAND[4], HAND[1]
    assert [motion.object_state(green, t)[2] for t in range(16)] == [t >= 6 for t in range(16)]
    assert [motion.object_state(pink, t)[2] for t in range(16)] == [t < 9 for t in range(16)]


def test_novel_clips_hold_a_held_out_pair_and_others_none(tmp_path, motion_dir):
    for r in _rows(motion.generate(tmp_path, split="novel", n=8, seed=0, progress=False)):
        assert any((o["color"], o["shape"]) in NOVEL_PAIRS for o in r["objects"])
    for r in _rows(motion_dir / "manifest.jsonl"):
        assert not any((o["color"], o["shape"]) in NOVEL_PAIRS for o in r["objects"])
    rng = random.Random(0)
    for split in ("novel", "val"):
        for _ in range(300):
            held_out = [(o.color, o.shape) in NOVEL_PAIRS for o in motion.sample_clip(rng, split)]
            assert any(held_out) == (split == "novel")


def test_scenes_are_valid():
    rng = random.Random(3)
    for _ in range(500):
        objs = motion.sample_clip(rng, "test")
        cells = [c for o in objs for c in {o.start_cell, o.end_cell}]
        assert 1 <= len(objs) <= 3 and len(set(cells)) == len(cells) and len({o.name for o in objs}) == len(objs)
        assert [o.start_cell for o in objs] == sorted(o.start_cell for o in objs)
        for o in objs:
            (r0, c0), (r1, c1) = o.start_cell, o.end_cell
            assert all(0 <= v < 3 for v in (r0, c0, r1, c1))
            assert (r1 - r0, c1 - c0) == motion.STEPS.get(o.motion, (0, 0))
            frames = range(7) if o.moves else range(1) if o.motion == "still" else range(4, 12)
            assert o.frame in frames


def test_same_seed_same_manifest_and_clips(tmp_path, motion_dir):
    again = motion.generate(tmp_path, split="train", n=24, seed=1, progress=False)
    assert again.read_text() == (motion_dir / "manifest.jsonl").read_text()
    # the same frames are drawn; x264 under load may round pixels a level or two differently
    from multimodaltransformer.modalities.video import load_video

    for p in (motion_dir / "videos").iterdir():
        a, b = np.stack(load_video(tmp_path / "videos" / p.name)), np.stack(load_video(p))
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 4.0  # a level or two; noise is 3
    other = motion.generate(tmp_path / "b", split="train", n=24, seed=2, progress=False)
    assert other.read_text().replace("train-2-", "train-1-") != again.read_text()


def _answer(qtype, prompt, objs):
    """The answer recomputed from the object list alone (what the question says, not the module's code)."""
    by_name = {f"{o['color']} {o['shape']}": o for o in objs}
    movers = [o for o in objs if o["motion"] in ("left", "right", "up", "down")]
    named = re.search(r"the (\w+ \w+) (?:move|at)", prompt)
    o = by_name[named.group(1)] if named else None
    if qtype == "direction":
        return o["motion"] if o in movers else None
    if qtype == "moving":
        return "yes" if o in movers else "no"
    if qtype == "count_moving":
        return motion.NUMBERS[len(movers)]
    if qtype == "order":
        if prompt == "which object moves first?":
            first, second = sorted(movers, key=lambda m: m["frame"])[:2]
            assert second["frame"] - first["frame"] >= 4
            return f"{first['color']} {first['shape']}"
        event = re.fullmatch(r"what (appears|disappears)\?", prompt).group(1)
        (doer,) = [d for d in objs if d["motion"] == event]
        return f"{doer['color']} {doer['shape']}"
    if qtype == "color":
        (doer,) = [d for d in objs if d["shape"] == re.fullmatch(r"what color is the (\w+)\?", prompt).group(1)]
        return doer["color"]
    if qtype == "shape":
        (doer,) = [d for d in objs if d["color"] == re.fullmatch(r"what shape is the (\w+) object\?", prompt).group(1)]
        return doer["shape"]
    when = qtype.split("_")[1]
    hidden = "appears" if when == "start" else "disappears"
    if qtype.startswith("position"):
        assert o["motion"] != hidden
        return ("left", "middle", "right")[o["start_cell" if when == "start" else "end_cell"][1]]
    assert prompt == f"how many objects are there at the {when}?"
    return motion.NUMBERS[sum(d["motion"] != hidden for d in objs)]


QUESTIONS = {"direction": r"which way does the \w+ \w+ move\?", "moving": r"does the \w+ \w+ move\?",
             "count_moving": r"how many objects move\?",
             "order": r"what appears\?|what disappears\?|which object moves first\?",
             "color": r"what color is the \w+\?", "shape": r"what shape is the \w+ object\?",
             "position_start": r"where is the \w+ \w+ at the start\?", "position_end": r"where is the \w+ \w+ at the end\?",
             "count_start": r"how many objects are there at the start\?",
             "count_end": r"how many objects are there at the end\?"}


def test_every_answer_agrees_with_the_objects(motion_dir):
    rows = _rows(motion_dir / "manifest.jsonl")
    assert len(rows) == 24 * 4
    for r in rows:
        assert r["video"] == f"videos/{r['id'].rsplit('-', 1)[0]}.mp4" and r["split"] == "train"
        objs = [motion.MovingObj.from_dict(o) for o in r["objects"]]
        # records round-trip exactly
        assert json.loads(json.dumps([{**asdict(o), "boxes": motion.track_boxes(o)} for o in objs])) == r["objects"]
        if r["task"] == "video_qa":
            assert re.fullmatch(QUESTIONS[r["question_type"]], r["prompt"]), r["prompt"]
            assert r["target"] == _answer(r["question_type"], r["prompt"], r["objects"]), r
    clips = collections.defaultdict(list)
    for r in rows:
        clips[r["video"]].append(r)
    for clip in clips.values():
        assert [r["id"].rsplit("-", 1)[1] for r in clip] == ["cap", "q0", "q1", "q2"]
        assert len({r.get("question_type") for r in clip[1:]}) == 3


def test_answers_are_right_and_balanced_over_many_clips():
    """Recomputed answers on 3,000 clips (no encoding), and the balance of yes/no and directions."""
    rng = random.Random("balance")
    answers = collections.defaultdict(collections.Counter)
    kinds = collections.Counter()
    for _ in range(3000):
        objs = motion.sample_clip(rng, "train")
        kinds.update("move" if o.moves else o.motion for o in objs)
        motion.plan_clip(objs, rng)
        dicts = [o.__dict__ for o in objs]
        for qtype, q, a in motion.questions(objs, rng, k=10):
            assert a == _answer(qtype, q, dicts), (q, a, objs)
            answers[qtype][a] += 1
    assert set(answers) == set(QUESTIONS)
    shares = {kind: count / kinds.total() for kind, count in kinds.items()}
    for kind, share in {"move": 0.55, "still": 0.25, "appears": 0.1, "disappears": 0.1}.items():
        assert abs(shares[kind] - share) < 0.02, shares
    assert 0.45 < answers["moving"]["yes"] / answers["moving"].total() < 0.6
    for way in motion.STEPS:
        assert 0.2 < answers["direction"][way] / answers["direction"].total() < 0.3


CLAUSE = r"an? (\w+) (\w+) (moves left|moves right|moves up|moves down|stays still|appears|disappears)"


def test_captions_follow_the_clause_rule(motion_dir):
    words = {"still": "stays still", "appears": "appears", "disappears": "disappears"}
    for r in _rows(motion_dir / "manifest.jsonl"):
        if r["task"] != "video_caption":
            continue
        assert r["prompt"] == motion.VIDEO_CAPTION_PROMPT == "describe the video."
        objs = r["objects"]
        joined = {1: "{}", 2: "{} while {}", 3: "{}, {} while {}"}[len(objs)]
        clauses = [f"{'an' if o['color'] == 'orange' else 'a'} {o['color']} {o['shape']} "
                   + words.get(o["motion"], f"moves {o['motion']}") for o in objs]
        assert r["target"] == joined.format(*clauses)
        assert all(re.fullmatch(CLAUSE, c) for c in clauses)
        assert [o["start_cell"] for o in objs] == sorted(o["start_cell"] for o in objs)  # reading order
    assert motion.caption([HAND[0], _obj("orange", "cross", "still", (2, 2), (2, 2))]) == (
        "a red circle moves right while an orange cross stays still")


def test_bad_split_and_n_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown MovingShapes split 'dev'"):
        motion.generate(tmp_path, split="dev", n=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be positive"):
        motion.generate(tmp_path, n=0)


def test_cli_writes_a_split(tmp_path, capsys):
    assert main(["data", "motion", "--split", "val", "--n", "2", "--questions", "1", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "manifest.jsonl")
    assert len(rows) == 2 * 2 and all((tmp_path / r["video"]).is_file() for r in rows)
    assert "wrote" in capsys.readouterr().out
    assert main(["data", "motion", "--n", "0", "--out", str(tmp_path)]) == 2


def test_motion_spec_resolves_and_caches(tmp_path):
    p = resolve_source("motion:split=test,n=2,seed=0,questions=1", tmp_path, progress=False)
    assert p == tmp_path / "movingshapes" / "test-n2-seed0-q1" / "manifest.jsonl"
    examples = read_manifest(p)
    assert [e.task for e in examples] == ["video_caption", "video_qa"] * 2 and examples[0].video.is_file()
    mtime = p.stat().st_mtime_ns
    assert resolve_source("motion:split=test,n=2,seed=0,questions=1", tmp_path, progress=False).stat().st_mtime_ns == mtime
    info = p.parent / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "version": 0}))
    resolve_source("motion:split=test,n=2,seed=0,questions=1", tmp_path, progress=False)
    assert json.loads(info.read_text())["version"] == motion.VERSION  # a stale cache is regenerated
    with pytest.raises(DataError, match="unknown split"):
        resolve_source("motion:split=dev", tmp_path)


def test_boxes_follow_the_objects_in_the_decoded_frames(hand_clip):
    _, frames = hand_clip
    for o in HAND:
        for t, box in enumerate(motion.track_boxes(o)):
            x, y, count = _centroid(frames[t], o.color)
            assert (box is not None) == (count > 100), (o.name, t)
            if box is not None:
                x0, y0, x1, y1 = (v * 64 for v in box)
                assert x0 < x < x1 and y0 < y < y1 and x1 - x0 == pytest.approx(SIZES[o.size], abs=0.01)
    assert motion.MovingObj.from_dict({**asdict(HAND[0]), "boxes": motion.track_boxes(HAND[0])}) == HAND[0]


def test_records_carry_the_boxes(motion_dir):
    for r in _rows(motion_dir / "manifest.jsonl")[:20]:
        for o in r["objects"]:
            assert o["boxes"] == motion.track_boxes(motion.MovingObj.from_dict(o))
