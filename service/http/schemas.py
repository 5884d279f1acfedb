"""The API's shapes as pydantic models: /predict's request forms, its answer and every error.

These models are what the OpenAPI document publishes (``service.http.openapi``); the hot path
builds its JSON without validating through them, and a test validates real answers against the
published schema so that the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

ModelSelector = Annotated[
    str,
    Field(
        description="Model name, or name:version (default: the default model's newest version).",
        examples=["cifar10-kd-wrn-16-1", "cifar10-kd-wrn-16-1:1"],
    ),
]
TopK = Annotated[
    int,
    Field(ge=1, description="Predictions per input, best first (default 5, at most the labels)."),
]
Base64Image = Annotated[
    str,
    Field(
        min_length=1,
        description="An encoded image (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM) in base64, "
        "optionally as a data: URL.",
    ),
]
BinaryFile = Annotated[bytes, WithJsonSchema({"type": "string", "format": "binary"})]
Tensor3 = list[list[list[float]]]
Tensor4 = list[list[list[list[float]]]]


LatencyBudget = Annotated[
    float,
    Field(
        gt=0,
        le=3_600_000,
        description="Route by objective: the end-to-end p99 (ms) the client accepts; the most "
        "accurate model predicted to meet it serves. Instead of 'model'.",
    ),
]
MinAccuracy = Annotated[
    float,
    Field(
        gt=0, le=1, description="Route by objective: the top-1 floor (a fraction, from the cards)."
    ),
]
Family = Annotated[str, Field(description="Route only among models of this data set (cards).")]
Fallback = Annotated[
    Literal["cheapest", "most_accurate"],
    Field(description="When no model meets the objective: serve this one instead of a 422."),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelSelector | None = None
    top_k: TopK | None = None
    latency_budget_ms: LatencyBudget | None = None
    min_accuracy: MinAccuracy | None = None
    family: Family | None = None
    fallback: Fallback | None = None


class PredictImage(_Body):
    """JSON body with one base64 image."""

    image: Base64Image


class PredictImages(_Body):
    """JSON body with several base64 images, answered in order."""

    images: list[Base64Image] = Field(min_length=1)


class PredictTensor(_Body):
    """JSON body with a tensor already preprocessed as the model card's input spec says."""

    tensor: Tensor3 | Tensor4 = Field(
        description="[C, H, W] or [N, C, H, W] finite numbers, in the card's input shape."
    )


class PredictForm(BaseModel):
    """multipart/form-data body: one ``file`` field per image, optional ``model`` and ``top_k``."""

    model_config = ConfigDict(extra="forbid")

    file: list[BinaryFile] = Field(min_length=1, description="Images; repeat the field.")
    model: ModelSelector | None = None
    top_k: TopK | None = None


class Prediction(BaseModel):
    """One ranked class of one input."""

    label: str = Field(examples=["cat"])
    index: int = Field(ge=0, examples=[3])
    score: float = Field(ge=0, le=1, description="Softmax probability.", examples=[0.93])


class Timing(BaseModel):
    """Where the request's time went, in milliseconds."""

    queue_ms: float = Field(ge=0, description="Wait in the batcher queue.")
    inference_ms: float = Field(ge=0, description="ONNX Runtime time of the whole batch.")
    total_ms: float = Field(ge=0, description="From the request's arrival to its answer.")


class Routing(BaseModel):
    """Why this model served, when the request gave an objective instead of a model name."""

    objective: dict[str, float | str]
    chosen: str = Field(description="name:version")
    predicted_p99_ms: float = Field(
        ge=0, description="The chosen model's predicted p99 for this request's inputs."
    )
    prediction: Literal["live", "queued work", "measured at load"]
    accuracy: float | None = Field(
        ge=0, le=1, description="The card's top-1; null for a version no card measured."
    )
    candidates_considered: int = Field(ge=0)
    fallback: Literal["cheapest", "most_accurate"] | None = None
    meets: dict[str, bool] | None = Field(
        None, description="After a fallback: which parts of the objective the model meets."
    )


class PredictResponse(BaseModel):
    """Answer of POST /predict: one list of top-k predictions per input, in input order."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: int = Field(ge=1)
    predictions: list[list[Prediction]]
    timing: Timing
    batch_size: int = Field(ge=1, description="Inputs in the batch this request ran in.")
    routing: Routing | None = None


class ErrorDetail(BaseModel):
    """A machine-readable code and a message that names the problem."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(examples=["invalid_tensor"])
    message: str


class ErrorResponse(BaseModel):
    """Every error answer of the service."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


# The error answers of POST /predict, by status: what a client can see and why.
PREDICT_ERRORS: dict[int, str] = {
    400: "Empty body, not an image, truncated image, bad base64, JSON, multipart or gzip/deflate "
    "body.",
    404: "Unknown model or version.",
    413: "Body, image pixel count or number of inputs over a limit.",
    415: "Unsupported content type or Content-Encoding (gzip, deflate or none).",
    422: "Readable but invalid: tensor shape/dtype/rank or non-finite values, unknown field, "
    "top_k out of range, an objective no model meets (the answer names the best candidates).",
    408: "The body did not arrive within the body-read timeout; the connection is closed.",
    500: "A fault of the server (the model failed on a batch); never a client's mistake.",
    503: "Overloaded, queue full or not ready; sent with Retry-After.",
    504: "The deadline passed before the answer was ready; sent with Retry-After.",
}
