"""The rules of an astromesh/v1 Agent spec, as the node applies them (and a little stricter).

`validate_agent` lists every violation at once, as ``"path message"`` strings, so that a caller
can answer with all of them together: the REST API's ``400 {"errors": [...]}`` and the
NexusAgent admission webhook's denial. It takes a parsed document (a dict); reading a request
body into one is the API's job.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from nexus.domain.messages import cap, kind, one_of, show, subpath

__all__ = [
    "API_VERSION",
    "GLYPH",
    "KIND",
    "NAME_RE",
    "ORCHESTRATION_PATTERNS",
    "PROVIDERS",
    "ROUTING_STRATEGIES",
    "TOOL_TYPES",
    "agent_name",
    "agent_version",
    "valid_name",
    "validate_agent",
]

API_VERSION = "astromesh/v1"
KIND = "Agent"

# `\Z` rather than `$`: `$` also matches before a trailing newline, so "bot\n" would pass, and
# callers using NAME_RE.match/search stay safe because both ends are anchored.
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

# The providers the node builds; litellm and centinela only exist when the node has those extras,
# but they are legitimate, so they are accepted. The node silently skips anything else.
PROVIDERS = ("ollama", "openai", "openai_compat", "azure_openai", "litellm", "centinela")
# `glyph` runs a `spec.program`; a node without the glyph extra runs a program-less glyph agent
# as react (with a warning in its log) and refuses one with a program at deploy, which the
# agent's status reports. Any other pattern with a program is refused here (below).
GLYPH = "glyph"
ORCHESTRATION_PATTERNS = (
    "react",
    "plan_and_execute",
    "parallel_fan_out",
    "pipeline",
    "supervisor",
    "swarm",
    GLYPH,
)
ROUTING_STRATEGIES = (
    "cost_optimized",
    "latency_optimized",
    "quality_first",
    "round_robin",
    "capability_match",
)
TOOL_TYPES = ("builtin", "agent", "client")

# Link-local ranges are blocked wholesale (169.254.169.254 lives there); these are the metadata
# services that sit elsewhere: Alibaba, AWS IMDS over IPv6, Azure WireServer, Oracle's legacy IMDS.
_METADATA_IPS = frozenset(
    ipaddress.ip_address(a)
    for a in ("100.100.100.200", "fd00:ec2::254", "168.63.129.16", "192.0.0.192")
)
_METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# IPv6 forms that carry an IPv4 address in their low 32 bits and reach it through translation.
_V4_CARRYING_NETS = tuple(
    ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "::/96")
)


# --------------------------------------------------------------------------------------------
# Validation


def valid_name(name: object) -> bool:
    """Whether `name` is an RFC 1123 label, the only agent name Kubernetes and the node accept."""
    return isinstance(name, str) and NAME_RE.match(name) is not None


def agent_name(spec: Any) -> str | None:
    """`metadata.name` when it is a valid agent name, else None."""
    metadata = spec.get("metadata") if isinstance(spec, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and valid_name(name) else None


def agent_version(spec: Any) -> str | None:
    """`metadata.version` when it is a string, else None."""
    metadata = spec.get("metadata") if isinstance(spec, dict) else None
    version = metadata.get("version") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else None


def _is_number(value: object) -> bool:
    # bool is an int subclass; `max_iterations: true` must not read as 1.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _non_empty_string(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


class _Validator:
    """Collects every violation of one spec; each check reports and carries on."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{path} {message}")

    def mapping(self, parent: dict[Any, Any], key: str, path: str, *, required: bool) -> Any:
        """parent[key] if it is a mapping; None (after reporting why) otherwise."""
        if key not in parent:
            if required:
                self.add(path, "is required")
            return None
        value = parent[key]
        if not isinstance(value, dict):
            self.add(path, "must be a mapping")
            return None
        return value

    def choice(self, parent: dict[Any, Any], key: str, path: str, allowed: tuple[str, ...]) -> None:
        if key in parent and not (isinstance(parent[key], str) and parent[key] in allowed):
            self.add(path, one_of(allowed))

    def run(self, spec: dict[Any, Any]) -> list[str]:
        if spec.get("apiVersion") != API_VERSION:
            if "apiVersion" in spec:
                self.add("apiVersion", f"must be {show(API_VERSION)}")
            else:
                self.add("apiVersion", "is required")
        if spec.get("kind") != KIND:
            if "kind" in spec:
                self.add("kind", f"must be {show(KIND)}")
            else:
                self.add("kind", "is required")
        metadata = self.mapping(spec, "metadata", "metadata", required=True)
        if metadata is not None:
            self.metadata(metadata)
        body = self.mapping(spec, "spec", "spec", required=True)
        if body is not None:
            self.spec(body)
        return self.errors

    def metadata(self, metadata: dict[Any, Any]) -> None:
        if "name" not in metadata:
            self.add("metadata.name", "is required")
        elif not isinstance(metadata["name"], str):
            self.add("metadata.name", "must be a string")
        elif not valid_name(metadata["name"]):
            self.add(
                "metadata.name",
                "must be an RFC 1123 label: at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit",
            )
        if "version" in metadata and not isinstance(metadata["version"], str):
            # YAML reads `version: 1.10` as the float 1.1: refuse it rather than store the wrong
            # version, and say how to fix it.
            self.add("metadata.version", 'must be a string (quote it, e.g. "1.0.0")')

    def spec(self, spec: dict[Any, Any]) -> None:
        identity = self.mapping(spec, "identity", "spec.identity", required=False)
        display_name = (identity or {}).get("display_name", "")
        if not isinstance(display_name, str):
            self.add("spec.identity.display_name", "must be a string")
        model = self.mapping(spec, "model", "spec.model", required=True)
        if model is not None:
            self.model(model)
        orchestration = self.mapping(spec, "orchestration", "spec.orchestration", required=False)
        if orchestration is not None:
            self.orchestration(orchestration)
        if "program" in spec:
            self.program(spec["program"], (orchestration or {}).get("pattern", "react"))
        if "tools" in spec:
            self.tools(spec["tools"])

    def model(self, model: dict[Any, Any]) -> None:
        path = "spec.model"
        # The node switches to the per-role schema as soon as `default` or `roles` appears and
        # then ignores primary/fallback/routing without a word, so a mix is refused.
        legacy = "primary" in model or "fallback" in model
        per_role = "default" in model or "roles" in model
        if legacy and per_role:
            self.add(path, "must use either primary/fallback or default/roles, not both")
        elif per_role:
            default = self.mapping(model, "default", f"{path}.default", required=True)
            if default is not None:
                self.role(default, f"{path}.default")
            roles = self.mapping(model, "roles", f"{path}.roles", required=False)
            for name, role in (roles or {}).items():
                role_path = subpath(f"{path}.roles", name)
                if isinstance(role, dict):
                    self.role(role, role_path)
                else:
                    self.add(role_path, "must be a mapping")
        elif "primary" not in model:
            self.add(path, "must define primary (provider and model) or default (candidates)")
        if legacy and not per_role:
            self.entry(model, "primary", f"{path}.primary", required=True)
            self.entry(model, "fallback", f"{path}.fallback", required=False)
            extra = self.mapping(model, "extra", f"{path}.extra", required=False)
            for name in extra or {}:
                self.entry(extra, name, subpath(f"{path}.extra", name), required=True)
            routing = self.mapping(model, "routing", f"{path}.routing", required=False)
            if routing is not None:
                self.choice(routing, "strategy", f"{path}.routing.strategy", ROUTING_STRATEGIES)
        self.model_subtree(model, path)

    def role(self, role: dict[Any, Any], path: str) -> None:
        candidates = role.get("candidates")
        if "candidates" not in role:
            self.add(f"{path}.candidates", "is required")
        elif not isinstance(candidates, list) or not candidates:
            self.add(f"{path}.candidates", "must be a non-empty list")
        else:
            for index, candidate in enumerate(candidates):
                self.provider_entry(candidate, f"{path}.candidates[{index}]")
        self.choice(role, "strategy", f"{path}.strategy", ROUTING_STRATEGIES)

    def entry(self, parent: dict[Any, Any], key: Any, path: str, *, required: bool) -> None:
        if key in parent:
            self.provider_entry(parent[key], path)
        elif required:
            self.add(path, "is required")

    def provider_entry(self, entry: object, path: str) -> None:
        if not isinstance(entry, dict):
            self.add(path, "must be a mapping")
            return
        # The node reads `source` first and `provider` as its legacy alias; both select an
        # adapter, so both must name one the node builds.
        if "provider" not in entry and "source" not in entry:
            self.add(f"{path}.provider", "is required")
        for key in ("provider", "source"):
            if key in entry and not (isinstance(entry[key], str) and entry[key] in PROVIDERS):
                self.add(f"{path}.{key}", one_of(PROVIDERS))
        if "model" not in entry:
            self.add(f"{path}.model", "is required")
        elif not _non_empty_string(entry["model"]):
            self.add(f"{path}.model", "must be a non-empty string")

    def model_subtree(self, model: dict[Any, Any], path: str) -> None:
        """Sampling parameters and endpoints, wherever they sit under spec.model: the node
        accepts them both at the top of a provider entry and under its `parameters`."""
        # Iterative with an identity set: validate_agent takes any dict, including very deep or
        # self-referencing ones, and must neither recurse without bound nor loop.
        seen: set[int] = set()
        stack: list[tuple[Any, str]] = [(model, path)]
        while stack:
            value, here = stack.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, list):
                stack.extend((child, f"{here}[{i}]") for i, child in enumerate(value))
                continue
            if not isinstance(value, dict):
                continue
            for key, child in value.items():
                child_path = subpath(here, key)
                if key == "temperature" and not (_is_number(child) and 0 <= child <= 2):
                    self.add(child_path, "must be a number between 0 and 2")
                elif key == "top_p" and not (_is_number(child) and 0 <= child <= 1):
                    self.add(child_path, "must be a number between 0 and 1")
                elif key == "endpoint":
                    problem = _endpoint_problem(child)
                    if problem:
                        self.add(child_path, problem)
                elif isinstance(child, dict | list):
                    stack.append((child, child_path))

    def orchestration(self, orchestration: dict[Any, Any]) -> None:
        path = "spec.orchestration"
        self.choice(orchestration, "pattern", f"{path}.pattern", ORCHESTRATION_PATTERNS)
        if "max_iterations" in orchestration:
            value = orchestration["max_iterations"]
            # 5.0 counts as 5: JSON does not tell them apart (nor does JSON Schema's
            # "integer"), and Kubernetes stores it as 5, which is what the node then reads.
            integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if not (_is_number(value) and integral and 1 <= value <= 100):
                self.add(f"{path}.max_iterations", "must be an integer between 1 and 100")
        if "timeout_seconds" in orchestration:
            value = orchestration["timeout_seconds"]
            if not (_is_number(value) and 1 <= value <= 300):
                self.add(f"{path}.timeout_seconds", "must be a number between 1 and 300")

    def program(self, program: object, pattern: object) -> None:
        if not _non_empty_string(program):
            self.add("spec.program", "must be a non-empty string (a Glyph program)")
        if pattern != GLYPH and isinstance(pattern, str) and pattern in ORCHESTRATION_PATTERNS:
            # The node refuses to deploy it: only the glyph pattern runs a program.
            self.add("spec.program", f"needs spec.orchestration.pattern {show(GLYPH)}")

    def tools(self, tools: object) -> None:
        if not isinstance(tools, list):
            self.add("spec.tools", "must be a list")
            return
        first_index: dict[str, int] = {}
        for index, tool in enumerate(tools):
            path = f"spec.tools[{index}]"
            if not isinstance(tool, dict):
                self.add(path, "must be a mapping")
                continue
            name = tool.get("name")
            if "name" not in tool:
                self.add(f"{path}.name", "is required")
            elif not isinstance(name, str) or not name.strip():
                self.add(f"{path}.name", "must be a non-empty string")
            elif name in first_index:
                self.add(f"{path}.name", f"duplicates spec.tools[{first_index[name]}]")
            else:
                first_index[name] = index
            if "type" not in tool:
                # The node's default type ('internal') is one it drops with only a log line.
                self.add(f"{path}.type", "is required")
            else:
                self.choice(tool, "type", f"{path}.type", TOOL_TYPES)


def _endpoint_problem(value: object) -> str | None:
    """Why `value` is not an acceptable model endpoint, or None.

    Only the literal host can be judged here: a DNS name that resolves to a metadata address is
    for the node's egress policy to stop. Known metadata host names are refused by name.
    """
    if not isinstance(value, str):
        return "must be an http(s) URL"
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a malformed or out-of-range port
    except ValueError:
        return "must be a valid http(s) URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http(s) URL"
    host = unicodedata.normalize("NFKC", parts.hostname or "").lower().rstrip(".")
    if not host:
        return "must be an http(s) URL with a host"
    if host in _METADATA_HOSTS or _is_blocked_ip(_host_ip(host)):
        return "must not target a link-local or cloud metadata address"
    return None


def _host_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # HTTP clients hand the host to the C resolver, which also reads legacy IPv4 spellings
    # such as 2852039166, 0xa9fea9fe or 169.254.43518 (all 169.254.169.254).
    if host[0].isdigit() and all(c in "0123456789abcdefx." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _is_blocked_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        if ip.sixtofour is not None and _is_blocked_ip(ip.sixtofour):
            return True
        carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if any(ip in net for net in _V4_CARRYING_NETS) and int(ip) > 1 and _is_blocked_ip(carried):
            return True
    return ip.is_link_local or ip in _METADATA_IPS


def validate_agent(spec: dict[str, Any]) -> list[str]:
    """Every violation of the astromesh/v1 Agent rules, as "path message" strings.

    An empty list means the spec is valid. Paths use dots and [i] indices, e.g.
    ``spec.tools[1].type must be one of: builtin, agent, client``. Unknown keys are allowed and
    never reported. At most MAX_ERRORS messages are returned, the last one counting the rest.
    Never raises, whatever the dict holds.
    """
    if not isinstance(spec, dict):
        return [f"the body must be a mapping (an Agent spec), not {kind(spec)}"]
    return cap(_Validator().run(spec))
