from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    PENDING: _ClassVar[State]
    LOADED: _ClassVar[State]
    FAILED: _ClassVar[State]
STATE_UNSPECIFIED: State
PENDING: State
LOADED: State
FAILED: State

class PodRef(_message.Message):
    __slots__ = ("namespace", "name", "uid")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    uid: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ...) -> None: ...

class MapSpec(_message.Message):
    __slots__ = ("name", "type", "key_size", "value_size", "max_entries", "flags")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[int] = ..., key_size: _Optional[int] = ..., value_size: _Optional[int] = ..., max_entries: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class Relocation(_message.Message):
    __slots__ = ("slot", "map", "pseudo", "group")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    slot: int
    map: str
    pseudo: int
    group: str
    def __init__(self, slot: _Optional[int] = ..., map: _Optional[str] = ..., pseudo: _Optional[int] = ..., group: _Optional[str] = ...) -> None: ...

class Program(_message.Message):
    __slots__ = ("direction", "insns", "relocations", "maps", "features", "instructions", "annotations")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    INSNS_FIELD_NUMBER: _ClassVar[int]
    RELOCATIONS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    direction: str
    insns: bytes
    relocations: _containers.RepeatedCompositeFieldContainer[Relocation]
    maps: _containers.RepeatedCompositeFieldContainer[MapSpec]
    features: _containers.RepeatedScalarFieldContainer[str]
    instructions: int
    annotations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, direction: _Optional[str] = ..., insns: _Optional[bytes] = ..., relocations: _Optional[_Iterable[_Union[Relocation, _Mapping]]] = ..., maps: _Optional[_Iterable[_Union[MapSpec, _Mapping]]] = ..., features: _Optional[_Iterable[str]] = ..., instructions: _Optional[int] = ..., annotations: _Optional[_Iterable[str]] = ...) -> None: ...

class MapEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class MapContents(_message.Message):
    __slots__ = ("direction", "map", "entries")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    direction: str
    map: str
    entries: _containers.RepeatedCompositeFieldContainer[MapEntry]
    def __init__(self, direction: _Optional[str] = ..., map: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[MapEntry, _Mapping]]] = ...) -> None: ...

class NamedEndpoint(_message.Message):
    __slots__ = ("address", "port")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class GroupChange(_message.Message):
    __slots__ = ("group", "add", "remove", "add_endpoints", "remove_endpoints", "replace", "drop", "seq")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    ADD_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    group: str
    add: _containers.RepeatedScalarFieldContainer[str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    add_endpoints: _containers.RepeatedCompositeFieldContainer[NamedEndpoint]
    remove_endpoints: _containers.RepeatedCompositeFieldContainer[NamedEndpoint]
    replace: bool
    drop: bool
    seq: int
    def __init__(self, group: _Optional[str] = ..., add: _Optional[_Iterable[str]] = ..., remove: _Optional[_Iterable[str]] = ..., add_endpoints: _Optional[_Iterable[_Union[NamedEndpoint, _Mapping]]] = ..., remove_endpoints: _Optional[_Iterable[_Union[NamedEndpoint, _Mapping]]] = ..., replace: _Optional[bool] = ..., drop: _Optional[bool] = ..., seq: _Optional[int] = ...) -> None: ...

class PodProgram(_message.Message):
    __slots__ = ("pod", "addresses", "hash", "features", "ingress", "egress", "maps", "groups")
    POD_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    addresses: _containers.RepeatedScalarFieldContainer[str]
    hash: str
    features: _containers.RepeatedScalarFieldContainer[str]
    ingress: Program
    egress: Program
    maps: _containers.RepeatedCompositeFieldContainer[MapContents]
    groups: _containers.RepeatedCompositeFieldContainer[GroupChange]
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ..., addresses: _Optional[_Iterable[str]] = ..., hash: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., ingress: _Optional[_Union[Program, _Mapping]] = ..., egress: _Optional[_Union[Program, _Mapping]] = ..., maps: _Optional[_Iterable[_Union[MapContents, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupChange, _Mapping]]] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("program",)
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    program: PodProgram
    def __init__(self, program: _Optional[_Union[PodProgram, _Mapping]] = ...) -> None: ...

class LoadInfo(_message.Message):
    __slots__ = ("program_id", "verified_insns", "attach", "hash", "instructions")
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_INSNS_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    program_id: int
    verified_insns: int
    attach: str
    hash: str
    instructions: int
    def __init__(self, program_id: _Optional[int] = ..., verified_insns: _Optional[int] = ..., attach: _Optional[str] = ..., hash: _Optional[str] = ..., instructions: _Optional[int] = ...) -> None: ...

class PodStatus(_message.Message):
    __slots__ = ("pod", "state", "message", "hash", "features", "addresses", "interface", "ingress", "egress")
    POD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    state: State
    message: str
    hash: str
    features: _containers.RepeatedScalarFieldContainer[str]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    interface: str
    ingress: LoadInfo
    egress: LoadInfo
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ..., state: _Optional[_Union[State, str]] = ..., message: _Optional[str] = ..., hash: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., addresses: _Optional[_Iterable[str]] = ..., interface: _Optional[str] = ..., ingress: _Optional[_Union[LoadInfo, _Mapping]] = ..., egress: _Optional[_Union[LoadInfo, _Mapping]] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("status", "changed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    status: PodStatus
    changed: bool
    def __init__(self, status: _Optional[_Union[PodStatus, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class ApplyBatchRequest(_message.Message):
    __slots__ = ("programs",)
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    programs: _containers.RepeatedCompositeFieldContainer[PodProgram]
    def __init__(self, programs: _Optional[_Iterable[_Union[PodProgram, _Mapping]]] = ...) -> None: ...

class ApplyResult(_message.Message):
    __slots__ = ("response", "code", "details")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    response: ApplyResponse
    code: str
    details: str
    def __init__(self, response: _Optional[_Union[ApplyResponse, _Mapping]] = ..., code: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class ApplyBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ApplyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ApplyResult, _Mapping]]] = ...) -> None: ...

class UpdateMapsRequest(_message.Message):
    __slots__ = ("pod", "maps")
    POD_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    maps: _containers.RepeatedCompositeFieldContainer[MapContents]
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ..., maps: _Optional[_Iterable[_Union[MapContents, _Mapping]]] = ...) -> None: ...

class UpdateMapsResponse(_message.Message):
    __slots__ = ("changed_entries",)
    CHANGED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    changed_entries: int
    def __init__(self, changed_entries: _Optional[int] = ...) -> None: ...

class UpdateGroupsRequest(_message.Message):
    __slots__ = ("groups", "full")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupChange]
    full: bool
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupChange, _Mapping]]] = ..., full: _Optional[bool] = ...) -> None: ...

class UpdateGroupsResponse(_message.Message):
    __slots__ = ("changed_entries", "digest")
    CHANGED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    changed_entries: int
    digest: str
    def __init__(self, changed_entries: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class ClusterNode(_message.Message):
    __slots__ = ("name", "addresses", "pod_cidrs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    POD_CIDRS_FIELD_NUMBER: _ClassVar[int]
    name: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    pod_cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., pod_cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class SetNodesRequest(_message.Message):
    __slots__ = ("nodes", "cluster_cidrs", "program_source")
    NODES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_CIDRS_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_SOURCE_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[ClusterNode]
    cluster_cidrs: _containers.RepeatedScalarFieldContainer[str]
    program_source: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[ClusterNode, _Mapping]]] = ..., cluster_cidrs: _Optional[_Iterable[str]] = ..., program_source: _Optional[str] = ...) -> None: ...

class SetNodesResponse(_message.Message):
    __slots__ = ("routes", "digest")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    routes: int
    digest: str
    def __init__(self, routes: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class ServiceBackend(_message.Message):
    __slots__ = ("address", "port")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class ServiceEntry(_message.Message):
    __slots__ = ("address", "port", "protocol", "backends", "affinity_seconds", "service")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    protocol: int
    backends: _containers.RepeatedCompositeFieldContainer[ServiceBackend]
    affinity_seconds: int
    service: str
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[int] = ..., backends: _Optional[_Iterable[_Union[ServiceBackend, _Mapping]]] = ..., affinity_seconds: _Optional[int] = ..., service: _Optional[str] = ...) -> None: ...

class SetServicesRequest(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceEntry]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceEntry, _Mapping]]] = ...) -> None: ...

class SetServicesResponse(_message.Message):
    __slots__ = ("services", "digest")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    services: int
    digest: str
    def __init__(self, services: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("pod",)
    POD_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ...) -> None: ...

class RemoveResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("pods", "groups_digest", "nodes_digest", "services_digest")
    PODS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NODES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SERVICES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[PodStatus]
    groups_digest: str
    nodes_digest: str
    services_digest: str
    def __init__(self, pods: _Optional[_Iterable[_Union[PodStatus, _Mapping]]] = ..., groups_digest: _Optional[str] = ..., nodes_digest: _Optional[str] = ..., services_digest: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("pod",)
    POD_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ...) -> None: ...

class CountersRequest(_message.Message):
    __slots__ = ("pod",)
    POD_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ...) -> None: ...

class DirectionCounters(_message.Message):
    __slots__ = ("allowed", "dropped", "redirected")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    REDIRECTED_FIELD_NUMBER: _ClassVar[int]
    allowed: int
    dropped: int
    redirected: int
    def __init__(self, allowed: _Optional[int] = ..., dropped: _Optional[int] = ..., redirected: _Optional[int] = ...) -> None: ...

class CountersResponse(_message.Message):
    __slots__ = ("pod", "ingress", "egress")
    POD_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    ingress: DirectionCounters
    egress: DirectionCounters
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ..., ingress: _Optional[_Union[DirectionCounters, _Mapping]] = ..., egress: _Optional[_Union[DirectionCounters, _Mapping]] = ...) -> None: ...

class TraceRequest(_message.Message):
    __slots__ = ("src", "dst", "protocol", "src_port", "dst_port")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    protocol: str
    src_port: int
    dst_port: int
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., protocol: _Optional[str] = ..., src_port: _Optional[int] = ..., dst_port: _Optional[int] = ...) -> None: ...

class TraceStep(_message.Message):
    __slots__ = ("pod", "direction", "retval", "verdict")
    POD_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    RETVAL_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    pod: str
    direction: str
    retval: int
    verdict: str
    def __init__(self, pod: _Optional[str] = ..., direction: _Optional[str] = ..., retval: _Optional[int] = ..., verdict: _Optional[str] = ...) -> None: ...

class TraceResponse(_message.Message):
    __slots__ = ("allowed", "steps", "translated_dst", "translated_port")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TRANSLATED_DST_FIELD_NUMBER: _ClassVar[int]
    TRANSLATED_PORT_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    steps: _containers.RepeatedCompositeFieldContainer[TraceStep]
    translated_dst: str
    translated_port: int
    def __init__(self, allowed: _Optional[bool] = ..., steps: _Optional[_Iterable[_Union[TraceStep, _Mapping]]] = ..., translated_dst: _Optional[str] = ..., translated_port: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("node", "backend", "pods", "ready", "version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    backend: str
    pods: int
    ready: bool
    version: str
    def __init__(self, node: _Optional[str] = ..., backend: _Optional[str] = ..., pods: _Optional[int] = ..., ready: _Optional[bool] = ..., version: _Optional[str] = ...) -> None: ...

class ProgramForRequest(_message.Message):
    __slots__ = ("pod", "node", "addresses")
    POD_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    pod: PodRef
    node: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pod: _Optional[_Union[PodRef, _Mapping]] = ..., node: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...
