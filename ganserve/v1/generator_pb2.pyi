from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_UNCONDITIONAL: _ClassVar[ModelKind]
    MODEL_KIND_CONDITIONAL: _ClassVar[ModelKind]

class LoadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_STATE_UNSPECIFIED: _ClassVar[LoadState]
    LOAD_STATE_LOADING: _ClassVar[LoadState]
    LOAD_STATE_READY: _ClassVar[LoadState]
    LOAD_STATE_FAILED: _ClassVar[LoadState]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_FLOAT32: _ClassVar[Encoding]
    ENCODING_UINT8: _ClassVar[Encoding]
    ENCODING_PNG: _ClassVar[Encoding]

class InterpolationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_METHOD_UNSPECIFIED: _ClassVar[InterpolationMethod]
    INTERPOLATION_METHOD_LERP: _ClassVar[InterpolationMethod]
    INTERPOLATION_METHOD_SLERP: _ClassVar[InterpolationMethod]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_UNCONDITIONAL: ModelKind
MODEL_KIND_CONDITIONAL: ModelKind
LOAD_STATE_UNSPECIFIED: LoadState
LOAD_STATE_LOADING: LoadState
LOAD_STATE_READY: LoadState
LOAD_STATE_FAILED: LoadState
ENCODING_UNSPECIFIED: Encoding
ENCODING_FLOAT32: Encoding
ENCODING_UINT8: Encoding
ENCODING_PNG: Encoding
INTERPOLATION_METHOD_UNSPECIFIED: InterpolationMethod
INTERPOLATION_METHOD_LERP: InterpolationMethod
INTERPOLATION_METHOD_SLERP: InterpolationMethod

class LatentBatch(_message.Message):
    __slots__ = ("count", "dim", "data")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    count: int
    dim: int
    data: bytes
    def __init__(self, count: _Optional[int] = ..., dim: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LatentVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Images(_message.Message):
    __slots__ = ("encoding", "count", "shape", "data", "png")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    encoding: Encoding
    count: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    png: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, encoding: _Optional[_Union[Encoding, str]] = ..., count: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., png: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "limits")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: ServerLimits
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_images_per_request", "max_images_per_stream", "max_stream_chunk", "max_message_bytes", "max_request_bytes")
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_STREAM_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_CHUNK_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_images_per_request: int
    max_images_per_stream: int
    max_stream_chunk: int
    max_message_bytes: int
    max_request_bytes: int
    def __init__(self, max_images_per_request: _Optional[int] = ..., max_images_per_stream: _Optional[int] = ..., max_stream_chunk: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_request_bytes: _Optional[int] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "versions", "kind", "latent_dim", "class_names", "image_shape", "value_min", "value_max", "dataset", "architecture", "quality", "metadata", "state", "state_message", "device", "runtime")
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_MIN_FIELD_NUMBER: _ClassVar[int]
    VALUE_MAX_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    kind: ModelKind
    latent_dim: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    value_min: float
    value_max: float
    dataset: str
    architecture: str
    quality: _containers.ScalarMap[str, float]
    metadata: _containers.ScalarMap[str, str]
    state: LoadState
    state_message: str
    device: str
    runtime: RuntimePlan
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., latent_dim: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., image_shape: _Optional[_Iterable[int]] = ..., value_min: _Optional[float] = ..., value_max: _Optional[float] = ..., dataset: _Optional[str] = ..., architecture: _Optional[str] = ..., quality: _Optional[_Mapping[str, float]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[LoadState, str]] = ..., state_message: _Optional[str] = ..., device: _Optional[str] = ..., runtime: _Optional[_Union[RuntimePlan, _Mapping]] = ...) -> None: ...

class RuntimePlan(_message.Message):
    __slots__ = ("graph", "single_thread_max_batch", "threads", "source", "tuning_seconds", "costs")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    SINGLE_THREAD_MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TUNING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COSTS_FIELD_NUMBER: _ClassVar[int]
    graph: str
    single_thread_max_batch: int
    threads: int
    source: str
    tuning_seconds: float
    costs: _containers.RepeatedCompositeFieldContainer[BatchCost]
    def __init__(self, graph: _Optional[str] = ..., single_thread_max_batch: _Optional[int] = ..., threads: _Optional[int] = ..., source: _Optional[str] = ..., tuning_seconds: _Optional[float] = ..., costs: _Optional[_Iterable[_Union[BatchCost, _Mapping]]] = ...) -> None: ...

class BatchCost(_message.Message):
    __slots__ = ("batch_size", "graph", "threads", "seconds")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    graph: str
    threads: int
    seconds: float
    def __init__(self, batch_size: _Optional[int] = ..., graph: _Optional[str] = ..., threads: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("model", "version", "count", "seed", "latents", "truncation", "labels", "encoding", "return_latents", "chunk_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    RETURN_LATENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    count: int
    seed: int
    latents: LatentBatch
    truncation: float
    labels: _containers.RepeatedScalarFieldContainer[int]
    encoding: Encoding
    return_latents: bool
    chunk_size: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., latents: _Optional[_Union[LatentBatch, _Mapping]] = ..., truncation: _Optional[float] = ..., labels: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., return_latents: _Optional[bool] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("model", "version", "images", "seed", "labels", "latents", "offset")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    images: Images
    seed: int
    labels: _containers.RepeatedScalarFieldContainer[int]
    latents: LatentBatch
    offset: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., seed: _Optional[int] = ..., labels: _Optional[_Iterable[int]] = ..., latents: _Optional[_Union[LatentBatch, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class Keyframe(_message.Message):
    __slots__ = ("seed", "latent", "label")
    SEED_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    seed: int
    latent: LatentVector
    label: int
    def __init__(self, seed: _Optional[int] = ..., latent: _Optional[_Union[LatentVector, _Mapping]] = ..., label: _Optional[int] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("model", "version", "keyframes", "steps", "method", "truncation", "encoding", "return_latents")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYFRAMES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    RETURN_LATENTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    keyframes: _containers.RepeatedCompositeFieldContainer[Keyframe]
    steps: int
    method: InterpolationMethod
    truncation: float
    encoding: Encoding
    return_latents: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., keyframes: _Optional[_Iterable[_Union[Keyframe, _Mapping]]] = ..., steps: _Optional[int] = ..., method: _Optional[_Union[InterpolationMethod, str]] = ..., truncation: _Optional[float] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., return_latents: _Optional[bool] = ...) -> None: ...

class InterpolateResponse(_message.Message):
    __slots__ = ("model", "version", "images", "latents", "class_weights")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    CLASS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    images: Images
    latents: LatentBatch
    class_weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Union[Images, _Mapping]] = ..., latents: _Optional[_Union[LatentBatch, _Mapping]] = ..., class_weights: _Optional[_Iterable[float]] = ...) -> None: ...

class SeedList(_message.Message):
    __slots__ = ("seeds",)
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seeds: _Optional[_Iterable[int]] = ...) -> None: ...

class ArithmeticTerm(_message.Message):
    __slots__ = ("weight", "latent", "seeds")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    weight: float
    latent: LatentVector
    seeds: SeedList
    def __init__(self, weight: _Optional[float] = ..., latent: _Optional[_Union[LatentVector, _Mapping]] = ..., seeds: _Optional[_Union[SeedList, _Mapping]] = ...) -> None: ...

class ArithmeticRequest(_message.Message):
    __slots__ = ("model", "version", "terms", "label", "truncation", "encoding", "return_term_images", "return_latents")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    RETURN_TERM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    RETURN_LATENTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    terms: _containers.RepeatedCompositeFieldContainer[ArithmeticTerm]
    label: int
    truncation: float
    encoding: Encoding
    return_term_images: bool
    return_latents: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., terms: _Optional[_Iterable[_Union[ArithmeticTerm, _Mapping]]] = ..., label: _Optional[int] = ..., truncation: _Optional[float] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., return_term_images: _Optional[bool] = ..., return_latents: _Optional[bool] = ...) -> None: ...

class ArithmeticResponse(_message.Message):
    __slots__ = ("model", "version", "result", "term_images", "latents")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TERM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    result: Images
    term_images: Images
    latents: LatentBatch
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., result: _Optional[_Union[Images, _Mapping]] = ..., term_images: _Optional[_Union[Images, _Mapping]] = ..., latents: _Optional[_Union[LatentBatch, _Mapping]] = ...) -> None: ...
