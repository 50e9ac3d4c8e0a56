import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_TOOL: _ClassVar[Role]

class ToolChoiceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_CHOICE_MODE_UNSPECIFIED: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_AUTO: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_NONE: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_REQUIRED: _ClassVar[ToolChoiceMode]

class ReasoningEffort(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASONING_EFFORT_UNSPECIFIED: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_NONE: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_MINIMAL: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_LOW: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_MEDIUM: _ClassVar[ReasoningEffort]
    REASONING_EFFORT_HIGH: _ClassVar[ReasoningEffort]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]
    FINISH_REASON_TOOL_CALLS: _ClassVar[FinishReason]
    FINISH_REASON_OTHER: _ClassVar[FinishReason]

class TokenClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_CLASS_UNSPECIFIED: _ClassVar[TokenClass]
    TOKEN_CLASS_INPUT_TEXT: _ClassVar[TokenClass]
    TOKEN_CLASS_INPUT_IMAGE: _ClassVar[TokenClass]
    TOKEN_CLASS_INPUT_AUDIO: _ClassVar[TokenClass]
    TOKEN_CLASS_INPUT_VIDEO: _ClassVar[TokenClass]
    TOKEN_CLASS_INPUT_DOCUMENT: _ClassVar[TokenClass]
    TOKEN_CLASS_INPUT_UNATTRIBUTED: _ClassVar[TokenClass]
    TOKEN_CLASS_CACHE_READ: _ClassVar[TokenClass]
    TOKEN_CLASS_CACHE_WRITE_5M: _ClassVar[TokenClass]
    TOKEN_CLASS_CACHE_WRITE_1H: _ClassVar[TokenClass]
    TOKEN_CLASS_CACHE_WRITE_UNKNOWN_TTL: _ClassVar[TokenClass]
    TOKEN_CLASS_OUTPUT_TEXT: _ClassVar[TokenClass]
    TOKEN_CLASS_OUTPUT_AUDIO: _ClassVar[TokenClass]
    TOKEN_CLASS_OUTPUT_IMAGE: _ClassVar[TokenClass]
    TOKEN_CLASS_OUTPUT_REASONING: _ClassVar[TokenClass]
    TOKEN_CLASS_OUTPUT_UNATTRIBUTED: _ClassVar[TokenClass]

class UsageWarning(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_WARNING_UNSPECIFIED: _ClassVar[UsageWarning]
    USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE: _ClassVar[UsageWarning]
    USAGE_WARNING_OUTPUT_MODALITY_DETAILS_INCOMPLETE: _ClassVar[UsageWarning]
    USAGE_WARNING_CACHE_TTL_UNKNOWN: _ClassVar[UsageWarning]
    USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION: _ClassVar[UsageWarning]
    USAGE_WARNING_THOUGHTS_INCLUDED_IN_CANDIDATES: _ClassVar[UsageWarning]
    USAGE_WARNING_PROVIDER_TOTAL_MISMATCH: _ClassVar[UsageWarning]
    USAGE_WARNING_DETAILS_EXCEED_TOTAL: _ClassVar[UsageWarning]
    USAGE_WARNING_USAGE_MISSING: _ClassVar[UsageWarning]
    USAGE_WARNING_FIGURE_OUT_OF_RANGE: _ClassVar[UsageWarning]

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_TEXT: _ClassVar[Modality]
    MODALITY_IMAGE: _ClassVar[Modality]
    MODALITY_AUDIO: _ClassVar[Modality]
    MODALITY_VIDEO: _ClassVar[Modality]
    MODALITY_DOCUMENT: _ClassVar[Modality]

class UsageGrouping(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_GROUPING_UNSPECIFIED: _ClassVar[UsageGrouping]
    USAGE_GROUPING_CALLER: _ClassVar[UsageGrouping]
    USAGE_GROUPING_PROVIDER: _ClassVar[UsageGrouping]
    USAGE_GROUPING_MODEL: _ClassVar[UsageGrouping]
    USAGE_GROUPING_ROUTE: _ClassVar[UsageGrouping]
    USAGE_GROUPING_DAY: _ClassVar[UsageGrouping]
    USAGE_GROUPING_LABEL: _ClassVar[UsageGrouping]

class BudgetPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_PERIOD_UNSPECIFIED: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_DAY: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_MONTH: _ClassVar[BudgetPeriod]
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_TOOL: Role
TOOL_CHOICE_MODE_UNSPECIFIED: ToolChoiceMode
TOOL_CHOICE_MODE_AUTO: ToolChoiceMode
TOOL_CHOICE_MODE_NONE: ToolChoiceMode
TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode
REASONING_EFFORT_UNSPECIFIED: ReasoningEffort
REASONING_EFFORT_NONE: ReasoningEffort
REASONING_EFFORT_MINIMAL: ReasoningEffort
REASONING_EFFORT_LOW: ReasoningEffort
REASONING_EFFORT_MEDIUM: ReasoningEffort
REASONING_EFFORT_HIGH: ReasoningEffort
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason
FINISH_REASON_OTHER: FinishReason
TOKEN_CLASS_UNSPECIFIED: TokenClass
TOKEN_CLASS_INPUT_TEXT: TokenClass
TOKEN_CLASS_INPUT_IMAGE: TokenClass
TOKEN_CLASS_INPUT_AUDIO: TokenClass
TOKEN_CLASS_INPUT_VIDEO: TokenClass
TOKEN_CLASS_INPUT_DOCUMENT: TokenClass
TOKEN_CLASS_INPUT_UNATTRIBUTED: TokenClass
TOKEN_CLASS_CACHE_READ: TokenClass
TOKEN_CLASS_CACHE_WRITE_5M: TokenClass
TOKEN_CLASS_CACHE_WRITE_1H: TokenClass
TOKEN_CLASS_CACHE_WRITE_UNKNOWN_TTL: TokenClass
TOKEN_CLASS_OUTPUT_TEXT: TokenClass
TOKEN_CLASS_OUTPUT_AUDIO: TokenClass
TOKEN_CLASS_OUTPUT_IMAGE: TokenClass
TOKEN_CLASS_OUTPUT_REASONING: TokenClass
TOKEN_CLASS_OUTPUT_UNATTRIBUTED: TokenClass
USAGE_WARNING_UNSPECIFIED: UsageWarning
USAGE_WARNING_INPUT_MODALITY_DETAILS_INCOMPLETE: UsageWarning
USAGE_WARNING_OUTPUT_MODALITY_DETAILS_INCOMPLETE: UsageWarning
USAGE_WARNING_CACHE_TTL_UNKNOWN: UsageWarning
USAGE_WARNING_REASONING_EXCLUDED_FROM_COMPLETION: UsageWarning
USAGE_WARNING_THOUGHTS_INCLUDED_IN_CANDIDATES: UsageWarning
USAGE_WARNING_PROVIDER_TOTAL_MISMATCH: UsageWarning
USAGE_WARNING_DETAILS_EXCEED_TOTAL: UsageWarning
USAGE_WARNING_USAGE_MISSING: UsageWarning
USAGE_WARNING_FIGURE_OUT_OF_RANGE: UsageWarning
MODALITY_UNSPECIFIED: Modality
MODALITY_TEXT: Modality
MODALITY_IMAGE: Modality
MODALITY_AUDIO: Modality
MODALITY_VIDEO: Modality
MODALITY_DOCUMENT: Modality
USAGE_GROUPING_UNSPECIFIED: UsageGrouping
USAGE_GROUPING_CALLER: UsageGrouping
USAGE_GROUPING_PROVIDER: UsageGrouping
USAGE_GROUPING_MODEL: UsageGrouping
USAGE_GROUPING_ROUTE: UsageGrouping
USAGE_GROUPING_DAY: UsageGrouping
USAGE_GROUPING_LABEL: UsageGrouping
BUDGET_PERIOD_UNSPECIFIED: BudgetPeriod
BUDGET_PERIOD_DAY: BudgetPeriod
BUDGET_PERIOD_MONTH: BudgetPeriod

class Message(_message.Message):
    __slots__ = ("role", "parts")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    role: Role
    parts: _containers.RepeatedCompositeFieldContainer[Part]
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., parts: _Optional[_Iterable[_Union[Part, _Mapping]]] = ...) -> None: ...

class Part(_message.Message):
    __slots__ = ("text", "image", "audio", "video", "document", "tool_call", "tool_result", "reasoning")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: Media
    audio: Media
    video: Media
    document: Media
    tool_call: ToolCall
    tool_result: ToolResult
    reasoning: Reasoning
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[Media, _Mapping]] = ..., audio: _Optional[_Union[Media, _Mapping]] = ..., video: _Optional[_Union[Media, _Mapping]] = ..., document: _Optional[_Union[Media, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., reasoning: _Optional[_Union[Reasoning, _Mapping]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments_json", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments_json: str
    arguments: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("tool_call_id", "name", "parts", "is_error")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    name: str
    parts: _containers.RepeatedCompositeFieldContainer[Part]
    is_error: bool
    def __init__(self, tool_call_id: _Optional[str] = ..., name: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[Part, _Mapping]]] = ..., is_error: _Optional[bool] = ...) -> None: ...

class Reasoning(_message.Message):
    __slots__ = ("text", "signature", "redacted")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    text: str
    signature: bytes
    redacted: bytes
    def __init__(self, text: _Optional[str] = ..., signature: _Optional[bytes] = ..., redacted: _Optional[bytes] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters", "strict")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: _struct_pb2.Struct
    strict: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., strict: _Optional[bool] = ...) -> None: ...

class ToolChoice(_message.Message):
    __slots__ = ("mode", "function_name")
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    mode: ToolChoiceMode
    function_name: str
    def __init__(self, mode: _Optional[_Union[ToolChoiceMode, str]] = ..., function_name: _Optional[str] = ...) -> None: ...

class ResponseFormat(_message.Message):
    __slots__ = ("json_schema", "json_object")
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    json_schema: JsonSchemaFormat
    json_object: JsonObjectFormat
    def __init__(self, json_schema: _Optional[_Union[JsonSchemaFormat, _Mapping]] = ..., json_object: _Optional[_Union[JsonObjectFormat, _Mapping]] = ...) -> None: ...

class JsonSchemaFormat(_message.Message):
    __slots__ = ("name", "schema", "strict", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema: _struct_pb2.Struct
    strict: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., strict: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class JsonObjectFormat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReasoningConfig(_message.Message):
    __slots__ = ("effort", "budget_tokens", "include_thoughts")
    EFFORT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THOUGHTS_FIELD_NUMBER: _ClassVar[int]
    effort: ReasoningEffort
    budget_tokens: int
    include_thoughts: bool
    def __init__(self, effort: _Optional[_Union[ReasoningEffort, str]] = ..., budget_tokens: _Optional[int] = ..., include_thoughts: _Optional[bool] = ...) -> None: ...

class Media(_message.Message):
    __slots__ = ("url", "data", "mime_type")
    URL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    url: str
    data: bytes
    mime_type: str
    def __init__(self, url: _Optional[str] = ..., data: _Optional[bytes] = ..., mime_type: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("model", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "labels", "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    response_format: ResponseFormat
    reasoning: ReasoningConfig
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[ToolChoice, _Mapping]] = ..., parallel_tool_calls: _Optional[bool] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ..., reasoning: _Optional[_Union[ReasoningConfig, _Mapping]] = ...) -> None: ...

class StreamCompleteRequest(_message.Message):
    __slots__ = ("model", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "labels", "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    response_format: ResponseFormat
    reasoning: ReasoningConfig
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[ToolChoice, _Mapping]] = ..., parallel_tool_calls: _Optional[bool] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ..., reasoning: _Optional[_Union[ReasoningConfig, _Mapping]] = ...) -> None: ...

class Choice(_message.Message):
    __slots__ = ("index", "message", "finish_reason", "raw_finish_reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    RAW_FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    message: Message
    finish_reason: FinishReason
    raw_finish_reason: str
    def __init__(self, index: _Optional[int] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., raw_finish_reason: _Optional[str] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("id", "model", "provider", "created", "choices", "usage", "cost", "attempts", "route")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    provider: str
    created: _timestamp_pb2.Timestamp
    choices: _containers.RepeatedCompositeFieldContainer[Choice]
    usage: Usage
    cost: Cost
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    route: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., choices: _Optional[_Iterable[_Union[Choice, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., route: _Optional[str] = ...) -> None: ...

class StreamCompleteResponse(_message.Message):
    __slots__ = ("delta", "summary", "tool_call_delta", "reasoning_delta")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_DELTA_FIELD_NUMBER: _ClassVar[int]
    REASONING_DELTA_FIELD_NUMBER: _ClassVar[int]
    delta: TextDelta
    summary: StreamSummary
    tool_call_delta: ToolCallDelta
    reasoning_delta: ReasoningDelta
    def __init__(self, delta: _Optional[_Union[TextDelta, _Mapping]] = ..., summary: _Optional[_Union[StreamSummary, _Mapping]] = ..., tool_call_delta: _Optional[_Union[ToolCallDelta, _Mapping]] = ..., reasoning_delta: _Optional[_Union[ReasoningDelta, _Mapping]] = ...) -> None: ...

class ToolCallDelta(_message.Message):
    __slots__ = ("choice_index", "index", "id", "name", "arguments_fragment")
    CHOICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    choice_index: int
    index: int
    id: str
    name: str
    arguments_fragment: str
    def __init__(self, choice_index: _Optional[int] = ..., index: _Optional[int] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_fragment: _Optional[str] = ...) -> None: ...

class ReasoningDelta(_message.Message):
    __slots__ = ("choice_index", "text")
    CHOICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    choice_index: int
    text: str
    def __init__(self, choice_index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("choice_index", "text")
    CHOICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    choice_index: int
    text: str
    def __init__(self, choice_index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class ChoiceFinish(_message.Message):
    __slots__ = ("index", "finish_reason", "raw_finish_reason", "tool_calls", "reasoning")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    RAW_FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    index: int
    finish_reason: FinishReason
    raw_finish_reason: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    reasoning: _containers.RepeatedCompositeFieldContainer[Reasoning]
    def __init__(self, index: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., raw_finish_reason: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., reasoning: _Optional[_Iterable[_Union[Reasoning, _Mapping]]] = ...) -> None: ...

class StreamSummary(_message.Message):
    __slots__ = ("id", "model", "provider", "created", "finishes", "usage", "cost", "attempts", "route")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FINISHES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    provider: str
    created: _timestamp_pb2.Timestamp
    finishes: _containers.RepeatedCompositeFieldContainer[ChoiceFinish]
    usage: Usage
    cost: Cost
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    route: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finishes: _Optional[_Iterable[_Union[ChoiceFinish, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., route: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("provider", "model", "code", "message", "duration")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    code: int
    message: str
    duration: _duration_pb2.Duration
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CallFailure(_message.Message):
    __slots__ = ("route", "attempts", "usage")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    route: str
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    usage: Usage
    def __init__(self, route: _Optional[str] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class CostLineItem(_message.Message):
    __slots__ = ("token_class", "tokens", "unit_price_nano_usd_per_million", "amount_nano_usd", "model")
    TOKEN_CLASS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_NANO_USD_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    token_class: TokenClass
    tokens: int
    unit_price_nano_usd_per_million: int
    amount_nano_usd: int
    model: str
    def __init__(self, token_class: _Optional[_Union[TokenClass, str]] = ..., tokens: _Optional[int] = ..., unit_price_nano_usd_per_million: _Optional[int] = ..., amount_nano_usd: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class Cost(_message.Message):
    __slots__ = ("line_items", "total_nano_usd", "unpriced", "unpriced_reason", "provider_reported_nano_usd", "price_entry")
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REASON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REPORTED_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    PRICE_ENTRY_FIELD_NUMBER: _ClassVar[int]
    line_items: _containers.RepeatedCompositeFieldContainer[CostLineItem]
    total_nano_usd: int
    unpriced: bool
    unpriced_reason: str
    provider_reported_nano_usd: int
    price_entry: str
    def __init__(self, line_items: _Optional[_Iterable[_Union[CostLineItem, _Mapping]]] = ..., total_nano_usd: _Optional[int] = ..., unpriced: _Optional[bool] = ..., unpriced_reason: _Optional[str] = ..., provider_reported_nano_usd: _Optional[int] = ..., price_entry: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input", "output", "total_tokens", "warnings", "estimated", "provider_reported", "other_models", "refused_figures")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REPORTED_FIELD_NUMBER: _ClassVar[int]
    OTHER_MODELS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIGURES_FIELD_NUMBER: _ClassVar[int]
    input: InputUsage
    output: OutputUsage
    total_tokens: int
    warnings: _containers.RepeatedScalarFieldContainer[UsageWarning]
    estimated: bool
    provider_reported: ProviderReportedUsage
    other_models: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    refused_figures: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input: _Optional[_Union[InputUsage, _Mapping]] = ..., output: _Optional[_Union[OutputUsage, _Mapping]] = ..., total_tokens: _Optional[int] = ..., warnings: _Optional[_Iterable[_Union[UsageWarning, str]]] = ..., estimated: _Optional[bool] = ..., provider_reported: _Optional[_Union[ProviderReportedUsage, _Mapping]] = ..., other_models: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ..., refused_figures: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("model", "usage")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    usage: Usage
    def __init__(self, model: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class InputUsage(_message.Message):
    __slots__ = ("total", "text", "image", "audio", "video", "document", "cache_read", "cache_write_5m", "cache_write_1h", "cache_write_unknown_ttl", "unattributed")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    CACHE_READ_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_5M_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_1H_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_UNKNOWN_TTL_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    total: int
    text: int
    image: int
    audio: int
    video: int
    document: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    cache_write_unknown_ttl: int
    unattributed: int
    def __init__(self, total: _Optional[int] = ..., text: _Optional[int] = ..., image: _Optional[int] = ..., audio: _Optional[int] = ..., video: _Optional[int] = ..., document: _Optional[int] = ..., cache_read: _Optional[int] = ..., cache_write_5m: _Optional[int] = ..., cache_write_1h: _Optional[int] = ..., cache_write_unknown_ttl: _Optional[int] = ..., unattributed: _Optional[int] = ...) -> None: ...

class OutputUsage(_message.Message):
    __slots__ = ("total", "text", "audio", "image", "reasoning", "unattributed")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    total: int
    text: int
    audio: int
    image: int
    reasoning: int
    unattributed: int
    def __init__(self, total: _Optional[int] = ..., text: _Optional[int] = ..., audio: _Optional[int] = ..., image: _Optional[int] = ..., reasoning: _Optional[int] = ..., unattributed: _Optional[int] = ...) -> None: ...

class ProviderReportedUsage(_message.Message):
    __slots__ = ("total_tokens", "tool_use_prompt_tokens", "accepted_prediction_tokens", "rejected_prediction_tokens", "cost_nano_usd", "server_tool_use")
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOOL_USE_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_PREDICTION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_PREDICTION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    SERVER_TOOL_USE_FIELD_NUMBER: _ClassVar[int]
    total_tokens: int
    tool_use_prompt_tokens: int
    accepted_prediction_tokens: int
    rejected_prediction_tokens: int
    cost_nano_usd: int
    server_tool_use: _containers.RepeatedCompositeFieldContainer[ServerToolUse]
    def __init__(self, total_tokens: _Optional[int] = ..., tool_use_prompt_tokens: _Optional[int] = ..., accepted_prediction_tokens: _Optional[int] = ..., rejected_prediction_tokens: _Optional[int] = ..., cost_nano_usd: _Optional[int] = ..., server_tool_use: _Optional[_Iterable[_Union[ServerToolUse, _Mapping]]] = ...) -> None: ...

class ServerToolUse(_message.Message):
    __slots__ = ("tool", "count")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    tool: str
    count: int
    def __init__(self, tool: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class GetUsageSummaryRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "caller", "labels", "provider", "model", "route", "group_by", "group_by_label_keys")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_LABEL_KEYS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    caller: str
    labels: _containers.ScalarMap[str, str]
    provider: str
    model: str
    route: str
    group_by: _containers.RepeatedScalarFieldContainer[UsageGrouping]
    group_by_label_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., route: _Optional[str] = ..., group_by: _Optional[_Iterable[_Union[UsageGrouping, str]]] = ..., group_by_label_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class UsageGroup(_message.Message):
    __slots__ = ("caller", "provider", "model", "route", "day", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    caller: str
    provider: str
    model: str
    route: str
    day: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, caller: _Optional[str] = ..., provider: _Optional[str] = ..., model: _Optional[str] = ..., route: _Optional[str] = ..., day: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UsageSummaryRow(_message.Message):
    __slots__ = ("group", "requests", "input", "output", "total_tokens", "cost_nano_usd", "unpriced_requests", "estimated_requests", "provider_reported_cost_nano_usd")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REPORTED_COST_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    group: UsageGroup
    requests: int
    input: InputUsage
    output: OutputUsage
    total_tokens: int
    cost_nano_usd: int
    unpriced_requests: int
    estimated_requests: int
    provider_reported_cost_nano_usd: int
    def __init__(self, group: _Optional[_Union[UsageGroup, _Mapping]] = ..., requests: _Optional[int] = ..., input: _Optional[_Union[InputUsage, _Mapping]] = ..., output: _Optional[_Union[OutputUsage, _Mapping]] = ..., total_tokens: _Optional[int] = ..., cost_nano_usd: _Optional[int] = ..., unpriced_requests: _Optional[int] = ..., estimated_requests: _Optional[int] = ..., provider_reported_cost_nano_usd: _Optional[int] = ...) -> None: ...

class GetUsageSummaryResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageSummaryRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageSummaryRow, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("providers", "routes")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[ProviderInfo]
    routes: _containers.RepeatedCompositeFieldContainer[RouteInfo]
    def __init__(self, providers: _Optional[_Iterable[_Union[ProviderInfo, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[RouteInfo, _Mapping]]] = ...) -> None: ...

class RouteInfo(_message.Message):
    __slots__ = ("name", "targets", "input_modalities", "mime_types", "features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    INPUT_MODALITIES_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    targets: _containers.RepeatedCompositeFieldContainer[RouteTarget]
    input_modalities: _containers.RepeatedScalarFieldContainer[Modality]
    mime_types: _containers.RepeatedScalarFieldContainer[str]
    features: Features
    def __init__(self, name: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[RouteTarget, _Mapping]]] = ..., input_modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., mime_types: _Optional[_Iterable[str]] = ..., features: _Optional[_Union[Features, _Mapping]] = ...) -> None: ...

class RouteTarget(_message.Message):
    __slots__ = ("provider", "model", "weight", "priority", "usable")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    USABLE_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    weight: int
    priority: int
    usable: bool
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., weight: _Optional[int] = ..., priority: _Optional[int] = ..., usable: _Optional[bool] = ...) -> None: ...

class ProviderInfo(_message.Message):
    __slots__ = ("name", "kind", "input_modalities", "mime_types", "features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INPUT_MODALITIES_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    input_modalities: _containers.RepeatedScalarFieldContainer[Modality]
    mime_types: _containers.RepeatedScalarFieldContainer[str]
    features: Features
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., input_modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., mime_types: _Optional[_Iterable[str]] = ..., features: _Optional[_Union[Features, _Mapping]] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("tools", "structured_output", "reasoning")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    tools: bool
    structured_output: bool
    reasoning: bool
    def __init__(self, tools: _Optional[bool] = ..., structured_output: _Optional[bool] = ..., reasoning: _Optional[bool] = ...) -> None: ...

class GetLimitsRequest(_message.Message):
    __slots__ = ("caller", "labels", "model")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALLER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    caller: str
    labels: _containers.ScalarMap[str, str]
    model: str
    def __init__(self, caller: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., model: _Optional[str] = ...) -> None: ...

class GetLimitsResponse(_message.Message):
    __slots__ = ("rate_limits", "budgets", "store_reachable")
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    STORE_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    rate_limits: _containers.RepeatedCompositeFieldContainer[RateLimitStatus]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    store_reachable: bool
    def __init__(self, rate_limits: _Optional[_Iterable[_Union[RateLimitStatus, _Mapping]]] = ..., budgets: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ..., store_reachable: _Optional[bool] = ...) -> None: ...

class RateLimitStatus(_message.Message):
    __slots__ = ("rule", "subject", "requests_per_minute", "requests_used", "tokens_per_minute", "tokens_used", "concurrent_streams", "streams_open", "requests_free_in")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_USED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_USED_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_OPEN_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FREE_IN_FIELD_NUMBER: _ClassVar[int]
    rule: str
    subject: str
    requests_per_minute: int
    requests_used: int
    tokens_per_minute: int
    tokens_used: int
    concurrent_streams: int
    streams_open: int
    requests_free_in: _duration_pb2.Duration
    def __init__(self, rule: _Optional[str] = ..., subject: _Optional[str] = ..., requests_per_minute: _Optional[int] = ..., requests_used: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., tokens_used: _Optional[int] = ..., concurrent_streams: _Optional[int] = ..., streams_open: _Optional[int] = ..., requests_free_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("budget", "subject", "period", "period_start", "period_end", "max_nano_usd", "spent_nano_usd", "remaining_nano_usd", "unpriced_calls")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    MAX_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    SPENT_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    REMAINING_NANO_USD_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_CALLS_FIELD_NUMBER: _ClassVar[int]
    budget: str
    subject: str
    period: BudgetPeriod
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    max_nano_usd: int
    spent_nano_usd: int
    remaining_nano_usd: int
    unpriced_calls: int
    def __init__(self, budget: _Optional[str] = ..., subject: _Optional[str] = ..., period: _Optional[_Union[BudgetPeriod, str]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_nano_usd: _Optional[int] = ..., spent_nano_usd: _Optional[int] = ..., remaining_nano_usd: _Optional[int] = ..., unpriced_calls: _Optional[int] = ...) -> None: ...
