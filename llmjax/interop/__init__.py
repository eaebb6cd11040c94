"""Hugging Face interop: checkpoints of every family that has an adapter in and out of llmjax, tensor by tensor."""
