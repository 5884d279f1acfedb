"""The served models: a model repository read, verified and loaded into model versions.

``registry`` reads every model card, checks each version's file against it (size, sha256, ONNX
signature), loads an inference session and a batcher per version, wires them to the metrics, and
resolves ``name`` / ``name:version`` for the layers above. Nothing here knows about HTTP.
"""
