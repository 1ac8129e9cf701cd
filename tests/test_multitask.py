"""Multi-task training: stream sampling, every objective in one run, per-task validation, resume."""

import json
import shutil

import pytest
import torch

from multimodaltransformer.config import ConfigError
from multimodaltransformer.models.multimodal import MultimodalTransformerModel
from multimodaltransformer.train.config import load_run_config
from multimodaltransformer.train.tasks import draw_stream, sampling_weights
from multimodaltransformer.train.trainer import train

from test_train import TINY

EXTRA = ("model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 96}",)
STREAMS = ("multitask={sampling: round_robin, tasks: ["
           "{name: gen, objective: lm, tasks: [caption, vqa]},"
           "{name: ret, objective: contrastive, tasks: [retrieval], batch_size: 8},"
           "{name: heads, objective: classify, tasks: [classify, match]},"
           "{name: itm, objective: itm, tasks: [retrieval], batch_size: 6, weight: 0.5},"
           "{name: mlm, objective: mlm, tasks: [retrieval]}]}")


def _run(shapes_dir, *extra):
    m = str(shapes_dir / "manifest.jsonl")
    return load_run_config("shapes-tiny", [*TINY, *EXTRA, f"data.train={m}", f"data.val={m}", STREAMS, *extra])


def test_sampling_weights():
    assert sampling_weights([100, 300], "proportional") == pytest.approx([0.25, 0.75])
    assert sampling_weights([100, 400], "temperature", 2.0) == pytest.approx([1 / 3, 2 / 3])  # sqrt: 10 : 20
    assert sampling_weights([1, 1000], "round_robin") == pytest.approx([0.5, 0.5])
    assert sampling_weights([100, 400], "temperature", 1e9) == pytest.approx([0.5, 0.5], abs=1e-6)


def test_draws_depend_only_on_seed_and_step():
    probs = [0.2, 0.8]
    draws = [draw_stream(s, 3, probs, "proportional") for s in range(400)]
    assert draws == [draw_stream(s, 3, probs, "proportional") for s in range(400)]
    assert 0.7 < sum(draws) / len(draws) < 0.9
    assert [draw_stream(s, 0, [1 / 3] * 3, "round_robin") for s in range(6)] == [0, 1, 2, 0, 1, 2]


def test_every_objective_trains_and_validates_per_task(shapes_dir, tmp_path):
    model = train(_run(shapes_dir, "train.max_steps=15", "train.eval_every=15", "train.save_every=15"),
                  tmp_path, progress=False)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {r["task"] for r in log if "task" in r} <= {"gen", "ret", "heads", "itm", "mlm"}
    assert set([r for r in log if "task_loss" in r][-1]["task_loss"]) == {"gen", "ret", "heads", "itm", "mlm"}
    val = [r for r in log if "val_loss" in r][-1]
    for key in ("val_loss/gen", "val_loss/ret", "val_loss/heads", "val_loss/itm", "val_loss/mlm",
                "vqa_accuracy", "caption_bleu4", "classify_accuracy", "match_accuracy", "retrieval_r1"):
        assert key in val, key
    # heads were configured from the training labels and travel with the weights
    saved = MultimodalTransformerModel.from_pretrained(tmp_path / "model")
    assert saved.head_labels["match"] == ["no", "yes"]
    assert saved.config.heads.itm and saved.config.heads.contrastive_dim == 64
    assert set(saved.head_labels) == {"classify", "match"}
    assert torch.equal(saved.state_dict()["logit_scale"], model.state_dict()["logit_scale"])


def test_multitask_resume_matches_uninterrupted_run(shapes_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    extra = ("multitask.sampling=proportional",)
    train(_run(shapes_dir, *extra), a, progress=False)
    train(_run(shapes_dir, *extra), b, progress=False)
    shutil.rmtree(b / "checkpoints" / "step-12")  # as if killed between step 6 and step 12
    shutil.rmtree(b / "model")
    train(_run(shapes_dir, *extra), b, resume=True, progress=False)
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_bad_multitask_configs_are_refused(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="duplicate"):
        _run(shapes_dir, "multitask={tasks: [{name: a}, {name: a}]}")
    with pytest.raises(ConfigError, match="objective"):
        _run(shapes_dir, "multitask={tasks: [{name: a, objective: nope}]}")
    with pytest.raises(Exception, match="no examples of tasks"):
        train(_run(shapes_dir, "multitask={tasks: [{name: a, tasks: [nothing]}]}"), tmp_path, progress=False)


@pytest.mark.parametrize("lock", [[], ["image"], ["image", "text"]])
def test_locked_towers_get_no_contrastive_gradient(tiny_model, tokenizer, shapes_dir, lock):
    from dataclasses import replace

    from multimodaltransformer.data import read_manifest
    from multimodaltransformer.data.collate import ExampleDataset, collate_examples
    from multimodaltransformer.models.multimodal import HeadsConfig
    from multimodaltransformer.train.tasks import TaskConfig, stream_loss

    torch.manual_seed(0)
    model = MultimodalTransformerModel(replace(tiny_model.config, heads=HeadsConfig(contrastive_dim=8)))
    model.tokenizer = tokenizer
    pairs = [e for e in read_manifest(shapes_dir) if e.task == "retrieval"][:6]
    data = ExampleDataset(pairs, tokenizer, model.image_processor, 48, "pair")
    batch = collate_examples([data[i] for i in range(len(data))], tokenizer.pad_id, model.image_processor)
    stream_loss(model, TaskConfig("r", "contrastive", lock=lock), batch).backward()

    def touched(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert touched(model.image_proj) and touched(model.text_proj) and model.logit_scale.grad is not None
    assert touched(model.image_encoder) == ("image" not in lock)
    assert touched(model.decoder) == ("text" not in lock)


def test_weight_zero_streams_are_never_drawn():
    probs = sampling_weights([100, 300, 50], "proportional", weights=[1.0, 0.0, 2.0])
    assert probs == pytest.approx([100 / 150, 0.0, 50 / 150])
    assert {draw_stream(step, 0, probs, "proportional") for step in range(200)} == {0, 2}
    rr = sampling_weights([1, 1, 1], "round_robin", weights=[0.0, 1.0, 1.0])
    assert [draw_stream(step, 0, rr, "round_robin") for step in range(4)] == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="weight 0"):
        sampling_weights([1, 1], "proportional", weights=[0.0, 0.0])


def test_a_stream_with_a_share_gets_that_fraction_of_the_steps():
    """`share`: a fixed fraction of the steps whatever the streams' sizes; the others split the rest."""
    assert sampling_weights([9000, 240000], "proportional", shares=[0.3, None]) == pytest.approx([0.3, 0.7])
    probs = sampling_weights([100, 300, 100], "proportional", shares=[0.5, None, None])
    assert probs == pytest.approx([0.5, 0.375, 0.125])
    assert sampling_weights([100, 300], "proportional", weights=[1.0, 0.0], shares=[0.4, None]) == [1.0, 0.0]
    draws = [draw_stream(s, 0, sampling_weights([10, 10_000], "proportional", shares=[0.25, None]), "proportional")
             for s in range(2000)]
    assert 0.70 < sum(draws) / len(draws) < 0.80
    for bad, why in [("{tasks: [{name: a, share: 1.5}, {name: b}]}", "share must be in"),
                     ("{tasks: [{name: a, share: 0.7}, {name: b, share: 0.6}]}", "add up to at most 1"),
                     ("{tasks: [{name: a, share: 0.5}, {name: b, share: 0.4}]}", "exactly 1"),
                     ("{sampling: round_robin, tasks: [{name: a, share: 0.5}, {name: b}]}", "round_robin")]:
        with pytest.raises(ConfigError, match=why):
            load_run_config("shapes-tiny", [f"multitask={bad}"])



def test_length_buckets_batch_clips_of_similar_length_in_a_seeded_order():
    """Each batch of a bucketed epoch holds clips of similar lengths (less padding for the audio
    encoder); the epoch is still a permutation of whole batches, the same for the same (seed, epoch)."""
    from multimodaltransformer.train.tasks import TaskConfig, TaskStream

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8_000, 128_000, (50,), generator=g).tolist()
    plain = TaskStream(TaskConfig("s"), [], [], batch_size=4)
    bucketed = TaskStream(TaskConfig("s", length_buckets=4), [], [], batch_size=4)
    for s in (plain, bucketed):
        s.dataset = list(range(50))
    plain.lengths, bucketed.lengths = None, lengths
    order = bucketed.order(3, 0)
    assert len(order) == 48 and len(set(order)) == 48  # whole batches: the short tail waits for the next epoch
    assert order == bucketed.order(3, 0) and order != bucketed.order(3, 1)
    padded = lambda o: sum(max(lengths[i] for i in o[b:b + 4]) for b in range(0, 48, 4))  # noqa: E731
    assert padded(order) < 0.8 * padded(plain.order(3, 0)[:48])
    with pytest.raises(ConfigError, match="length_buckets must be"):
        load_run_config("shapes-tiny", ["multitask={tasks: [{name: a, length_buckets: -1}]}"])
