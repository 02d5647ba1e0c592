"""Request and response bodies of the REST API (also the source of its OpenAPI schemas)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from nexus.api.auth import MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS
from nexus.domain.agentspec_schema import SPACE_CLASS

# One spelling for the server and the document: no "@" or whitespace around a single "@".
_EMAIL_BODY = f"[^@{SPACE_CLASS}]{{1,64}}@[^@{SPACE_CLASS}]{{1,255}}"
EMAIL_PATTERN = f"^{_EMAIL_BODY}$"
_EMAIL = re.compile(_EMAIL_BODY)


def _storable(v: str) -> str:
    # What neither store keeps: NUL (PostgreSQL text cannot hold it, and both backends refuse
    # it alike) and lone surrogates (no UTF-8 form). A 400 here, not a failure in the store.
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode") from None
    return v


#: Free text that the store keeps.
StoredText = Annotated[str, AfterValidator(_storable)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterRequest(_Body):
    email: str = Field(max_length=320, json_schema_extra={"pattern": EMAIL_PATTERN})
    # The rule itself is auth.validate_password (its messages); the schema states it for
    # clients: at least MIN_PASSWORD_CHARS characters, at most MAX_PASSWORD_BYTES in UTF-8.
    password: str = Field(
        max_length=1024,
        description=(
            f"At least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes "
            "in UTF-8 (bcrypt's limit)"
        ),
        json_schema_extra={"minLength": MIN_PASSWORD_CHARS, "maxLength": MAX_PASSWORD_BYTES},
    )
    displayName: StoredText = Field(min_length=1, max_length=256)  # noqa: N815 - the wire name

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if not _EMAIL.fullmatch(v):
            raise ValueError("must be an email address")
        return v


class LoginRequest(_Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class RefreshRequest(_Body):
    refreshToken: str = Field(max_length=512)  # noqa: N815


class TenantCreateRequest(_Body):
    displayName: StoredText = Field(min_length=1, max_length=256)  # noqa: N815
    nodeProfile: str = Field("full", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # noqa: N815


class KeyCreateRequest(_Body):
    label: StoredText = Field("", max_length=256)


class UserOut(BaseModel):
    id: str
    email: str
    displayName: str  # noqa: N815


class AuthBundle(BaseModel):
    accessToken: str  # noqa: N815
    refreshToken: str  # noqa: N815
    user: UserOut


class TokenPair(BaseModel):
    accessToken: str  # noqa: N815
    refreshToken: str  # noqa: N815


class TenantOut(BaseModel):
    id: str
    crName: str  # noqa: N815
    displayName: str  # noqa: N815
    nodeProfile: str  # noqa: N815
    phase: str = Field(
        description="Pending, Provisioning (also while the node is not available), Ready or Error"
    )
    namespace: str | None = None
    nodeEndpoint: str | None = Field(  # noqa: N815
        None, description="The node's in-cluster URL; set once the tenant is Ready"
    )
    agentCount: int = 0  # noqa: N815
    nodeAvailable: bool = Field(  # noqa: N815
        False,
        description=(
            "Whether the tenant's astromesh-node has an available pod (its Deployment's status); "
            "false until the node first answers its readiness probe, and while it restarts"
        ),
    )


class TenantRef(BaseModel):
    id: str
    crName: str  # noqa: N815
    displayName: str  # noqa: N815


class MeUser(UserOut):
    tenants: list[TenantOut]


class MeKey(BaseModel):
    tenant: TenantRef
    keyHash: str  # noqa: N815


class KeyCreated(BaseModel):
    rawKey: str  # noqa: N815
    hash: str
    label: str
    createdAt: str  # noqa: N815


class KeyOut(BaseModel):
    hash: str
    label: str
    createdAt: str  # noqa: N815
    lastUsedAt: str | None = None  # noqa: N815


class AgentSummary(BaseModel):
    name: str
    namespace: str
    version: str | None = None
    phase: str


class AgentListItem(AgentSummary):
    nodeAck: bool = False  # noqa: N815
    lastSyncedAt: str | None = None  # noqa: N815
    createdAt: str | None = None  # noqa: N815


class AgentStatusOut(BaseModel):
    phase: str
    nodeAck: bool = False  # noqa: N815
    lastSyncedAt: str | None = None  # noqa: N815
    conditions: list[dict[str, Any]] = []


class AgentDetail(BaseModel):
    name: str
    namespace: str
    version: str | None = None
    spec: dict[str, Any]
    status: AgentStatusOut
    createdAt: str | None = None  # noqa: N815


class AgentLive(BaseModel):
    name: str
    phase: str
    nodeAck: bool = False  # noqa: N815
    lastSyncedAt: str | None = None  # noqa: N815
    node: dict[str, Any]


class LogLine(BaseModel):
    timestamp: str
    level: str
    message: str


class AgentLogs(BaseModel):
    agent: str
    lines: list[LogLine]


class AgentMetrics(BaseModel):
    agent: str
    metrics: dict[str, Any]


class Deleted(BaseModel):
    deleted: str


class Revoked(BaseModel):
    revoked: str


class ErrorOut(BaseModel):
    error: str


class ErrorsOut(BaseModel):
    errors: list[str]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
