import pytest

from multimodaltransformer.config import ConfigError, apply_overrides, from_dict
from multimodaltransformer.train.config import RunConfig, load_run_config


def test_packaged_configs_load():
    for name in ("shapes-tiny", "demo"):
        run = load_run_config(name)
        assert isinstance(run, RunConfig) and run.model.image is not None
    whisper = load_run_config("whisper-lora")  # the fine-tune recipe: adapters on the audio path, rehearsal
    assert whisper.finetune.sentence_case and whisper.finetune.lora.rank == 8
    assert [t.data for t in whisper.multitask.tasks] == [None, "prose:split=train,n=1200,seed=0"]


def test_overrides_apply_typed_values():
    run = load_run_config("shapes-tiny", ["train.max_steps=7", "model.decoder.depth=3", "train.lr=1e-2"])
    assert run.train.max_steps == 7 and run.model.decoder.depth == 3 and run.train.lr == 0.01


def test_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"train: unknown field\(s\) \['max_step'\]"):
        load_run_config("shapes-tiny", ["train.max_step=7"])
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        load_run_config("shapes-tiny", ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="divisible"):
        load_run_config("shapes-tiny", ["model.decoder.heads=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["nokey"])
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")


def test_round_trip_through_dict():
    import dataclasses

    run = load_run_config("demo")
    assert from_dict(RunConfig, dataclasses.asdict(run)) == run
