"""Online half: a FastAPI microservice that serves a model repository with ONNX Runtime."""
