from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HttpRequest(_message.Message):
    __slots__ = ("method", "path", "host", "headers", "source_ip", "body", "context_extensions", "source_principal")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ContextExtensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    host: str
    headers: _containers.ScalarMap[str, str]
    source_ip: str
    body: bytes
    context_extensions: _containers.ScalarMap[str, str]
    source_principal: str
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., host: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., source_ip: _Optional[str] = ..., body: _Optional[bytes] = ..., context_extensions: _Optional[_Mapping[str, str]] = ..., source_principal: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("check_request", "http")
    CHECK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    check_request: bytes
    http: HttpRequest
    def __init__(self, check_request: _Optional[bytes] = ..., http: _Optional[_Union[HttpRequest, _Mapping]] = ...) -> None: ...

class StepExplanation(_message.Message):
    __slots__ = ("step", "verdict", "details")
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    step: str
    verdict: str
    details: _struct_pb2.Struct
    def __init__(self, step: _Optional[str] = ..., verdict: _Optional[str] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("decision", "status", "reason", "policy", "rule", "steps", "shadow_reason")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_REASON_FIELD_NUMBER: _ClassVar[int]
    decision: str
    status: int
    reason: str
    policy: str
    rule: str
    steps: _containers.RepeatedCompositeFieldContainer[StepExplanation]
    shadow_reason: str
    def __init__(self, decision: _Optional[str] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., policy: _Optional[str] = ..., rule: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepExplanation, _Mapping]]] = ..., shadow_reason: _Optional[str] = ...) -> None: ...
