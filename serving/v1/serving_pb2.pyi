from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]

class Uncertainty(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNCERTAINTY_UNSPECIFIED: _ClassVar[Uncertainty]
    UNCERTAINTY_NONE: _ClassVar[Uncertainty]
    UNCERTAINTY_VARIANCE: _ClassVar[Uncertainty]
    UNCERTAINTY_JOINT_COVARIANCE: _ClassVar[Uncertainty]

class Link(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_UNSPECIFIED: _ClassVar[Link]
    LINK_PROBIT: _ClassVar[Link]
    LINK_MONTE_CARLO: _ClassVar[Link]

class KernelOutput(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KERNEL_OUTPUT_UNSPECIFIED: _ClassVar[KernelOutput]
    KERNEL_OUTPUT_FULL: _ClassVar[KernelOutput]
    KERNEL_OUTPUT_TRACE: _ClassVar[KernelOutput]
    KERNEL_OUTPUT_DIAGONAL: _ClassVar[KernelOutput]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
    MODEL_STATE_UNLOADED: _ClassVar[ModelState]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
UNCERTAINTY_UNSPECIFIED: Uncertainty
UNCERTAINTY_NONE: Uncertainty
UNCERTAINTY_VARIANCE: Uncertainty
UNCERTAINTY_JOINT_COVARIANCE: Uncertainty
LINK_UNSPECIFIED: Link
LINK_PROBIT: Link
LINK_MONTE_CARLO: Link
KERNEL_OUTPUT_UNSPECIFIED: KernelOutput
KERNEL_OUTPUT_FULL: KernelOutput
KERNEL_OUTPUT_TRACE: KernelOutput
KERNEL_OUTPUT_DIAGONAL: KernelOutput
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_FAILED: ModelState
MODEL_STATE_UNLOADED: ModelState

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "content")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    content: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., content: _Optional[bytes] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("name", "version", "version_label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    version_label: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., version_label: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_spec", "inputs", "uncertainty", "observation_noise", "link", "samples", "seed")
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_NOISE_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    inputs: Tensor
    uncertainty: Uncertainty
    observation_noise: bool
    link: Link
    samples: int
    seed: int
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., uncertainty: _Optional[_Union[Uncertainty, str]] = ..., observation_noise: _Optional[bool] = ..., link: _Optional[_Union[Link, str]] = ..., samples: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_spec", "mean", "variance", "covariance", "probabilities", "seed", "jitter")
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    VARIANCE_FIELD_NUMBER: _ClassVar[int]
    COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    mean: Tensor
    variance: Tensor
    covariance: Tensor
    probabilities: Tensor
    seed: int
    jitter: float
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., mean: _Optional[_Union[Tensor, _Mapping]] = ..., variance: _Optional[_Union[Tensor, _Mapping]] = ..., covariance: _Optional[_Union[Tensor, _Mapping]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., jitter: _Optional[float] = ...) -> None: ...

class ComputeKernelRequest(_message.Message):
    __slots__ = ("model_spec", "x1", "x2", "output", "per_layer", "dtype", "max_tile_bytes")
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PER_LAYER_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_TILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    x1: Tensor
    x2: Tensor
    output: KernelOutput
    per_layer: bool
    dtype: DataType
    max_tile_bytes: int
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., x1: _Optional[_Union[Tensor, _Mapping]] = ..., x2: _Optional[_Union[Tensor, _Mapping]] = ..., output: _Optional[_Union[KernelOutput, str]] = ..., per_layer: _Optional[bool] = ..., dtype: _Optional[_Union[DataType, str]] = ..., max_tile_bytes: _Optional[int] = ...) -> None: ...

class KernelTile(_message.Message):
    __slots__ = ("model_spec", "layer", "row_start", "col_start", "values", "kernel_shape", "tile_count")
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ROW_START_FIELD_NUMBER: _ClassVar[int]
    COL_START_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    layer: str
    row_start: int
    col_start: int
    values: Tensor
    kernel_shape: _containers.RepeatedScalarFieldContainer[int]
    tile_count: int
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., layer: _Optional[str] = ..., row_start: _Optional[int] = ..., col_start: _Optional[int] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., kernel_shape: _Optional[_Iterable[int]] = ..., tile_count: _Optional[int] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("dtype", "shape")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model_spec",)
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class GetModelMetadataResponse(_message.Message):
    __slots__ = ("model_spec", "input", "output", "likelihood", "parametrization", "parameter_count", "posterior_type", "structure", "available_versions", "version_labels", "metadata_json")
    class VersionLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    PARAMETRIZATION_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    STRUCTURE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    input: TensorInfo
    output: TensorInfo
    likelihood: str
    parametrization: str
    parameter_count: int
    posterior_type: str
    structure: str
    available_versions: _containers.RepeatedScalarFieldContainer[int]
    version_labels: _containers.ScalarMap[str, int]
    metadata_json: str
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., input: _Optional[_Union[TensorInfo, _Mapping]] = ..., output: _Optional[_Union[TensorInfo, _Mapping]] = ..., likelihood: _Optional[str] = ..., parametrization: _Optional[str] = ..., parameter_count: _Optional[int] = ..., posterior_type: _Optional[str] = ..., structure: _Optional[str] = ..., available_versions: _Optional[_Iterable[int]] = ..., version_labels: _Optional[_Mapping[str, int]] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("version", "state", "error_message")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: ModelState
    error_message: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetModelStatusRequest(_message.Message):
    __slots__ = ("model_spec",)
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class GetModelStatusResponse(_message.Message):
    __slots__ = ("model_spec", "versions")
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions", "version_labels")
    class VersionLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    version_labels: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., version_labels: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...
