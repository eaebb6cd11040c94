"""Hugging Face interop: Llama checkpoints in and out of llmjax, tensor by tensor."""
