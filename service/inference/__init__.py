"""Running models: ONNX Runtime sessions, the dynamic batcher, and outputs turned into predictions.

``session`` owns one ONNX Runtime session per model version (provider, threads, IO binding,
warm-up); ``batcher`` merges concurrent requests into batches on dedicated inference threads,
bounded and cancellation-safe; ``predictions`` turns logits into ranked, labelled answers. Nothing
here knows about model repositories, HTTP or metrics (the batcher reports through an observer).
"""
