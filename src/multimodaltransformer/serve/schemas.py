"""The OpenAI-compatible wire format: pydantic models for every request and response.

Field names and shapes follow OpenAI's chat completions, embeddings and images APIs, so any
OpenAI client works. Beam-search fields (`num_beams`, `length_penalty`) and `repetition_penalty`,
`top_k` are extras, as vLLM accepts them, and so is the `video_url` content part (vLLM's form
beside OpenAI's `image_url` and `input_audio`). Unknown request fields are ignored (clients send
many); wrong types and out-of-range values are 400s that name the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

MAX_STOP = 4  # OpenAI allows up to 4 stop strings


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str = Field(max_length=50_000_000)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Request):
    data: str  # base64
    format: Literal["wav", "mp3", "flac", "ogg"] = "wav"


class AudioPart(_Request):
    type: Literal["input_audio"]
    input_audio: InputAudio


class VideoURL(_Request):
    url: str = Field(max_length=100_000_000)  # a backstop: MediaPolicy.max_video_bytes refuses first, more clearly


class VideoPart(_Request):
    """A clip as vLLM takes it: {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}."""
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImagePart | AudioPart | VideoPart, Field(discriminator="type")]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extras (vLLM-style): beam search and penalties
    num_beams: int = Field(1, ge=1, le=8)
    length_penalty: float = 1.0
    repetition_penalty: float = Field(1.0, gt=0.0)
    top_k: int = Field(0, ge=0)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop: at most {MAX_STOP} stop strings, got {len(stops)}")
        return [s for s in stops if s]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class EmbeddingRequest(_Request):
    model: str
    # strings are texts; "data:image/..." URLs are images (an extension: OpenAI embeds text only)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 (the openai client's default)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: dict[str, int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "multimodaltransformer"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ImageRequest(_Request):
    """POST /v1/images/generations. `model`, `quality`, `style`, `user` are accepted and not used;
    `seed`, `guidance_scale`, `temperature`, `top_k`, `top_p` and `rerank` are extras (imagine.py)."""
    prompt: str = Field(max_length=4000)
    model: str | None = None
    n: int = Field(1, ge=1, le=10)
    size: str | None = None  # "WxW"; None: the model's own size
    response_format: str | None = None  # only "b64_json" is served
    seed: int | None = None
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)  # classifier-free guidance; 1 = none
    # left out (None): the model's own default (TextToImageConfig.sampling)
    temperature: float | None = Field(None, gt=0.0, le=2.0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    rerank: int | None = Field(None, ge=1, le=16)  # candidates drawn per image, best kept (MODEL_DIR/reranker)


class ImageData(BaseModel):
    b64_json: str  # a PNG
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class ModelKind(BaseModel):
    """What the served model takes and does, e.g. inputs ["image", "text"], task "image + text -> text";
    a text-to-image model has output "image" (the field is left out for text, as older pages read it)."""
    inputs: list[Literal["image", "audio", "video", "text"]]
    task: str
    embeddings: bool = False  # POST /v1/embeddings works
    output: Literal["text", "image"] = "text"  # "image": POST /v1/images/generations, no chat

    @model_serializer(mode="wrap")
    def _drop_text_output(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body = handler(self)
        if body.get("output") == "text":
            del body["output"]
        return body


class ExampleCard(BaseModel):
    image: str | None = None  # a URL on this server (/examples/NAME), None: suggested questions only
    questions: list[str]


class ExampleList(BaseModel):
    """GET /v1/examples (not an OpenAI route): the chat page's starting points."""
    object: Literal["list"] = "list"
    model: str
    kind: ModelKind
    data: list[ExampleCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body for an HTTP status."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
            503: "server_error", 504: "timeout_error"}.get(status, "server_error" if status >= 500 else
                                                               "invalid_request_error")
    return ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code)).model_dump()
