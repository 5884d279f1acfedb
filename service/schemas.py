"""Response shapes of the API, for the OpenAPI docs only (answers are built without validation)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    """One ranked class of one input."""

    label: str = Field(examples=["7"])
    index: int = Field(examples=[7])
    score: float = Field(description="Softmax probability.", examples=[0.93])


class Timing(BaseModel):
    """Where the request's time went, in milliseconds."""

    queue_ms: float = Field(description="Wait in the batcher queue.")
    inference_ms: float = Field(description="ONNX Runtime time of the whole batch.")
    total_ms: float = Field(description="From the first body byte read to the answer.")


class PredictResponse(BaseModel):
    """Answer of POST /predict: one list of top-k predictions per input, in input order."""

    model: str
    version: int
    predictions: list[list[Prediction]]
    timing: Timing
    batch_size: int = Field(description="Inputs in the batch this request ran in.")


class ErrorDetail(BaseModel):
    """A machine-readable code and a message that names the problem."""

    code: str = Field(examples=["invalid_tensor"])
    message: str


class ErrorResponse(BaseModel):
    """Every error answer of the service."""

    error: ErrorDetail
