"""Every bad config is refused by `validate` with a message that names the key and the fix."""

import pytest

from llmjax.config import ConfigError, default_config, mesh_shape, validate
from llmjax.rundir import RunDir, WorkdirError

from conftest import make_tiny_config


def test_default_config_is_valid_on_one_and_eight_devices():
    assert validate(default_config(), 1) == {"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1}
    assert validate(default_config(), 8) == {"data": 8, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1}


def test_config_is_locked_against_unknown_keys():
    config = default_config()
    with pytest.raises(AttributeError):
        config.model.num_layer = 3
    with pytest.raises(AttributeError):
        config.training = {}


@pytest.mark.parametrize("change, key, hint", [
    (lambda c: c.model.update(num_kv_heads=3), "config.model.num_kv_heads=3", "must divide"),
    (lambda c: c.model.update(head_dim=7), "config.model.head_dim=7", "must be even"),
    (lambda c: c.model.update(dtype="float16"), "config.model.dtype='float16'", "one of"),
    (lambda c: c.model.update(remat="everything"), "config.model.remat", "one of"),
    (lambda c: c.model.update(num_layers=0), "config.model.num_layers=0", "positive integer"),
    (lambda c: c.data.update(seq_len=64), "config.data.seq_len=64", "max_seq_len"),
    (lambda c: c.train.update(global_batch_size=12), "config.train.global_batch_size=12", "multiple of 8"),
    (lambda c: c.train.update(microbatches=3), "config.train.global_batch_size", "microbatches=3"),
    (lambda c: c.optimizer.update(warmup_steps=10), "config.optimizer.warmup_steps=10", "train.steps"),
    (lambda c: c.optimizer.update(schedule="step"), "config.optimizer.schedule", "cosine"),
    (lambda c: c.mesh.ici.update(data=3), "config.mesh.ici", "8 are present"),
    (lambda c: c.mesh.ici.update(data=-1, fsdp=-1), "config.mesh.ici.fsdp=-1", "only one mesh axis"),
    (lambda c: c.mesh.ici.update(data=-1, fsdp=3), "config.mesh.ici.data=-1", "does not divide"),
    (lambda c: c.mesh.ici.update(data=4, sequence=2) or c.train.update(global_batch_size=6),
     "config.train.global_batch_size=6", "multiple of 4"),
    (lambda c: c.mesh.ici.update(data=1, sequence=8) or c.data.update(seq_len=12),
     "config.data.seq_len=12", "sequence axis size 8"),
    (lambda c: c.mesh.dcn.update(data=2), "config.mesh.dcn", "the job has 1 processes"),
    (lambda c: c.mesh.ici.update(data=1, tensor=8), "config.model.num_kv_heads=2", "mesh axis size 8"),
])
def test_bad_config_is_refused_with_key_and_fix(change, key, hint):
    config = make_tiny_config()
    change(config)
    with pytest.raises(ConfigError) as error:
        validate(config, 8)
    assert key in str(error.value) and hint in str(error.value), str(error.value)


def test_mesh_fill_axis():
    config = make_tiny_config()
    config.mesh.ici.update(data=-1, fsdp=2, tensor=2)
    assert mesh_shape(config, 8) == {"data": 2, "fsdp": 2, "expert": 1, "sequence": 1, "tensor": 2}
    config.mesh.ici.update(data=-1, fsdp=4, tensor=1)
    config.mesh.dcn.update(data=2)
    assert mesh_shape(config, 8, num_processes=2) == {"data": 2, "fsdp": 4, "expert": 1, "sequence": 1, "tensor": 1}


def test_workdir_checks(tmp_path):
    config = make_tiny_config()
    new = RunDir(str(tmp_path / "new" / "run"))
    assert (new.path, new.check(config)) == (tmp_path / "new" / "run", {})
    assert not (tmp_path / "new").exists(), "checking must create nothing"
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkdirError, match="not a directory"):
        RunDir(str(tmp_path / "file")).check(config)
    with pytest.raises(WorkdirError, match="is a file"):
        RunDir(str(tmp_path / "file" / "run")).check(config)
    with pytest.raises(WorkdirError, match="cannot write"):
        RunDir("/proc/llmjax-test-run").check(config)
    assert list(tmp_path.glob("**/.llmjax-probe-*")) == []


def test_workdir_of_the_same_run_is_reused_and_another_refused(tmp_path):
    config = make_tiny_config()
    RunDir(tmp_path).write_config(config)
    longer = make_tiny_config()
    longer.train.steps = 50
    assert RunDir(str(tmp_path)).check(longer) == {"train.steps": (10, 50)}
    wider = make_tiny_config(d_model=64, head_dim=16)
    with pytest.raises(WorkdirError, match=r"model.d_model: 32 -> 64.*init_from"):
        RunDir(str(tmp_path)).check(wider)


@pytest.mark.parametrize("mesh, model, field", [
    (dict(data=1, expert=8), dict(num_experts=4), "model.num_experts"),  # Experts split over the expert axis.
    (dict(data=4, sequence=2), dict(num_experts=4), "mesh.ici.sequence"),  # MoE routes whole rows.
    # Weights split embed over fsdp x expert.
    (dict(data=1, fsdp=4, expert=2), dict(num_experts=4, d_model=36, num_heads=2, head_dim=18), "model.d_model"),
    (dict(data=8), dict(num_experts=4, experts_per_token=5), "model.experts_per_token"),
    (dict(data=8), dict(num_experts=4, moe_every=3), "model.moe_every"),  # 2 layers.
])
def test_moe_fields_are_checked_against_each_other_and_the_mesh(mesh, model, field):
    config = make_tiny_config("llama", **model)
    config.mesh.ici.update(**mesh)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(config, 8)


@pytest.mark.parametrize("family, objective, change, message", [
    ("llama", "sft", dict(max_new_tokens=32), "objective.max_new_tokens=32: must be below model.max_seq_len=32"),
    ("llama", "sft", dict(eval_examples=0), "objective.eval_examples=0: must be at least 1"),
    ("t5", "seq2seq", dict(eval_examples=-2), "objective.eval_examples=-2: must be at least 1"),
    ("llama", "sft", dict(num_beams=0), "objective.num_beams=0: must be at least 1"),
    ("t5", "seq2seq", dict(max_new_tokens=0), "objective.max_new_tokens=0: must be at least 1"),
])
def test_generation_settings_that_cannot_generate_are_refused_before_anything_runs(family, objective, change,
                                                                                     message):
    config = make_tiny_config(family)
    config.objective = default_config(family, objective).objective
    config.objective.max_new_tokens = 8  # The tiny model holds 32 tokens.
    validate(config, 8)
    config.objective.update(**change)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(config, 8)


def test_an_encoder_decoder_generates_past_model_max_seq_len():
    config = make_tiny_config("t5")  # Its decoder's positions are relative: no bound on new tokens.
    config.objective = default_config("t5", "seq2seq").objective
    config.objective.max_new_tokens = 2 * config.model.max_seq_len
    validate(config, 8)
