#!/usr/bin/env bash
# The public curl walkthrough of the Nexus REST API:
# register -> login -> tenant -> key -> YAML agent with X-API-Key -> Running with nodeAck ->
# status -> delete agent -> delete tenant.
#
#   NEXUS_URL=http://localhost:8080 hack/walkthrough.sh
set -euo pipefail
URL="${NEXUS_URL:-http://localhost:8080}"
EMAIL="${WALKTHROUGH_EMAIL:-walker-$RANDOM$RANDOM@example.com}"
PASSWORD="${WALKTHROUGH_PASSWORD:-correct-horse-battery}"
TIMEOUT="${WALKTHROUGH_TIMEOUT:-90}"

step() { printf '==> %s\n' "$*"; }
fail() { printf 'walkthrough failed: %s\n' "$*" >&2; exit 1; }
# call METHOD PATH [curl args...]: prints the body; fails on an unexpected status.
call() {
  local method="$1" path="$2" expect="$3"; shift 3
  local out status
  out="$(curl -sS -X "$method" "$URL$path" -w '\n%{http_code}' "$@")" || fail "$method $path: curl error"
  status="${out##*$'\n'}"
  body="${out%$'\n'*}"
  [[ "$status" == "$expect" ]] || fail "$method $path: HTTP $status (expected $expect): $body"
  printf '%s' "$body"
}

step "register $EMAIL"
call POST /auth/register 201 -H 'Content-Type: application/json' \
  -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\",\"displayName\":\"Walker\"}" >/dev/null

step "login"
TOKEN="$(call POST /auth/login 200 -H 'Content-Type: application/json' \
  -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" | jq -r .accessToken)"
AUTH=(-H "Authorization: Bearer $TOKEN")

step "create tenant"
TENANT="$(call POST /api/v1/tenants 201 "${AUTH[@]}" -H 'Content-Type: application/json' \
  -d '{"displayName":"Walkthrough","nodeProfile":"full"}' | jq -r .id)"
echo "tenant $TENANT"

step "create API key"
KEY="$(call POST "/api/v1/tenants/$TENANT/keys" 201 "${AUTH[@]}" -H 'Content-Type: application/json' \
  -d '{"label":"walkthrough"}' | jq -r .rawKey)"

step "wait for the tenant to be Ready"
for _ in $(seq "$TIMEOUT"); do
  phase="$(call GET "/api/v1/tenants/$TENANT" 200 "${AUTH[@]}" | jq -r .phase)"
  [[ "$phase" == Ready ]] && break
  sleep 1
done
[[ "$phase" == Ready ]] || fail "tenant phase $phase"

step "create agent support-bot (YAML, X-API-Key)"
call POST /api/v1/agents 201 -H "X-API-Key: $KEY" -H 'Content-Type: application/yaml' --data-binary @- >/dev/null <<'YAML'
apiVersion: astromesh/v1
kind: Agent
metadata: {name: support-bot, version: "1.0.0"}
spec:
  identity: {display_name: "Support Bot"}
  model:
    primary: {provider: ollama, model: "llama3.1:8b"}
  orchestration: {pattern: react}
YAML

step "poll until Running with nodeAck"
for _ in $(seq "$TIMEOUT"); do
  agent="$(call GET /api/v1/agents/support-bot 200 -H "X-API-Key: $KEY")"
  [[ "$(jq -r '.status.phase + "/" + (.status.nodeAck|tostring)' <<<"$agent")" == Running/true ]] && break
  sleep 1
done
[[ "$(jq -r .status.phase <<<"$agent")" == Running ]] || fail "agent: $agent"

step "live status"
status="$(call GET /api/v1/agents/support-bot/status 200 -H "X-API-Key: $KEY")"
[[ "$(jq -r .node.status <<<"$status")" == deployed ]] || fail "status: $status"

step "delete agent"
call DELETE /api/v1/agents/support-bot 200 -H "X-API-Key: $KEY" >/dev/null

step "delete tenant"
call DELETE "/api/v1/tenants/$TENANT" 200 "${AUTH[@]}" >/dev/null

echo "walkthrough passed"
