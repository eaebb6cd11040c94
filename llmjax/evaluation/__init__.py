"""A run evaluated by outside harnesses. `loading.load_run` opens a run's checkpoint on this
host's devices, `scoring.Scorer` scores and extends token sequences in fixed-shape batches,
and `lm_eval_adapter` answers EleutherAI lm-evaluation-harness requests with them
(`llmjax-lm-eval --model llmjax --model_args workdir=RUN --tasks ...`).

lm-eval is an optional extra (`pip install 'llmjax[lmeval]'`): nothing in llmjax imports this
package, and only `lm_eval_adapter` imports lm-eval.
"""
