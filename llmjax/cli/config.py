"""`llmjax-config --config X [--config.a.b=v ...]`: the resolved config and what it implies."""

from __future__ import annotations

from absl import app
from ml_collections import config_flags

from llmjax.cli.app import load_config, run as run_app

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (a get_config() module).")


def describe(config, num_devices: int) -> str:
    """The config and its derived figures. A config no device count can run is an error
    (`check_fields` raises); one that needs more devices than this machine has is described,
    with that said, since it is meant for a cluster."""
    from llmjax import flops  # noqa: PLC0415
    from llmjax.config import ConfigError, check_fields, validate  # noqa: PLC0415

    check_fields(config)

    seq = config.data.seq_len
    tokens_per_step = config.train.global_batch_size * seq
    per_token = flops.flops_per_token(config)
    lines = [str(config), "derived:",
             f"  parameters:            {flops.param_count(config.model):,}",
             f"  non-embedding params:  {flops.non_embedding_params(config.model):,}",
             f"  FLOPs per token:       {per_token:,.0f} (training, 6N + attention)",
             f"  tokens per step:       {tokens_per_step:,}",
             f"  tokens in the run:     {tokens_per_step * config.train.steps:,}",
             f"  FLOPs in the run:      {per_token * tokens_per_step * config.train.steps:.3e}"]
    try:
        shape = validate(config, num_devices)
        lines.append(f"  mesh on {num_devices} local devices: {shape}")
    except ConfigError as error:
        lines.append(f"  not runnable on the {num_devices} local devices: {error}")
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = load_config(_CONFIG)
    import jax  # noqa: PLC0415

    print(describe(config, jax.device_count()))


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
