"""Offline half: train teachers and compact students, export them to ONNX, write a model repo."""
