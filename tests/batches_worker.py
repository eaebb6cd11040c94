"""One process of a multi-process job that loads training batches and saves the rows it holds.

Run as `python batches_worker.py OUT MIXTURE STEPS NUM_PROCESSES PROCESS_ID PORT` with
XLA_FLAGS giving each process 8/NUM_PROCESSES devices; test_pipeline.py assembles the saved
shards into global batches and compares them with the single-process ones.
"""

import sys

import numpy as np

from llmjax.config import default_config
from llmjax.data.dataset import resolve
from llmjax.parallel import distributed
from llmjax.run import bootstrap


def main(out, mixture, steps, num_processes, process_id, port):
    distributed.initialize(f"localhost:{port}", int(num_processes), int(process_id))
    config = default_config()  # Not conftest's: importing it would add 8 devices to each process.
    config.model.vocab_size = 512
    config.data.update(mixture=mixture, seq_len=16)
    config.train.global_batch_size = 8
    datasets = resolve(config.data, config.model.vocab_size, cache_dir=None, log=lambda *_: None)
    batches = bootstrap(config, train=False).train_batches(datasets)
    saved = {"local_rows": np.asarray(batches.local_rows)}
    for step in map(int, steps.split(",")):
        for key, array in batches.device_batch(step).items():
            for shard in array.addressable_shards:
                rows = range(*shard.index[0].indices(config.train.global_batch_size))
                saved[f"{step}/{key}/{rows.start}"] = np.asarray(shard.data)
    np.savez(out, **saved)
    distributed.barrier("saved")


if __name__ == "__main__":
    main(*sys.argv[1:])
