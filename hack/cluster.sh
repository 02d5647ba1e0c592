#!/usr/bin/env bash
# A real single-node Kubernetes 1.20 on this machine, with Nexus deployed on it as a user would.
#
#   hack/cluster.sh up           cluster + images + `make deploy` + the seeded dev account
#   hack/cluster.sh down         stop and remove everything `up` started or changed
#   hack/cluster.sh check-clean  fail if anything of a cluster is left on the machine
#   hack/cluster.sh status|env   what runs; shell exports (KUBECONFIG, NEXUS_URL, DOCKER_HOST)
#
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet (dockershim -> Debian's
# docker.io) and kube-proxy (iptables), all built from Debian's kubernetes source package
# (hack/setup-envtest.sh, hack/setup-cluster-bin.sh). Every address lives on this machine: the
# node address is on a dummy interface this script creates, and the pod and service ranges are
# routed to local devices before anything starts, so no packet for them can leave through the
# default route; pods get no masquerading and no route out (a filter chain rejects it).
# There is no cluster DNS: Services are reached by ClusterIP (the manager reaches tenant nodes
# through the API server or by pod IP, not by name).
#
# Exit status of `up`: 0 ready; 3 this machine cannot run a kubelet (the message says why);
# anything else is a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${NEXUS_CLUSTER_DIR:-/var/lib/nexus-cluster}"
CACHE="${NEXUS_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus/cluster}"
# The image store outlives the cluster (like the binaries): a warm `up` reuses layers.
DOCKER_ROOT="$CACHE/docker"
BASELINE="$CACHE/host-baseline"

DUMMY=nexus0
BRIDGE=cni0
NODE_NAME=nexus-node
NODE_IP=10.250.0.1
NODE_NET=10.250.0.0/24
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SVC_CIDR=10.96.0.0/16
API_SVC_IP=10.96.0.1
# Fixed in config/local, so the URL of a cluster is always the same.
NEXUS_SVC_IP=10.96.0.80
NEXUS_URL="http://$NEXUS_SVC_IP:8080"
ETCD_PORT=2379
API_PORT=6443
# Routing table and rule priority of the pods' own routes (see setup_network).
POD_RT_TABLE=2510
POD_RT_PREF=2510

DOCKER_BIN=/usr/bin/docker        # Debian's client: another may come first on PATH
DOCKER_SOCK="$STATE/docker/docker.sock"
DOCKER=("$DOCKER_BIN" -H "unix://$DOCKER_SOCK")
export DOCKER_BUILDKIT=0          # the classic builder: BuildKit would pull its frontend image

BASE_IMAGE="${NEXUS_BASE_IMAGE:-nexus-local/python:3.12}"
ASTROMESH_VERSION="${ASTROMESH_VERSION:-0.74.1}"
NODE_IMAGE="nexus-local/astromesh-node:$ASTROMESH_VERSION"
IMG="${IMG:-nexus-local/nexus:dev}"
PAUSE_IMAGE_REPO=nexus-local/pause

DEV_EMAIL=dev@astromesh.local
DEV_PASSWORD=astromesh-dev-2024
DEV_TENANT="Development Tenant"

# Sysctls that dockerd, the kubelet, kube-proxy or the bridge plugin may change: recorded
# before `up`, restored by `down`.
SYSCTLS=(
  net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv6.conf.all.forwarding
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables kernel.panic kernel.panic_on_oops vm.overcommit_memory
  vm.panic_on_oom kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait
)
# Paths the kubelet and dockerd write outside their configured folders.
STRAY_PATHS=(/var/log/pods /var/log/containers /var/lib/kubelet /etc/docker/key.json /etc/docker /run/docker /run/containerd /var/lib/dockershim)
CHAIN_RE='^(KUBE-|CNI-|NEXUS-)'
TABLES=(filter nat mangle raw)
# Both iptables backends: a component may use either. The legacy one only once its tables
# exist (listing them would create them).
ipt_cmds() {
  echo iptables; echo ip6tables
  [[ -s /proc/net/ip_tables_names ]] && command -v iptables-legacy >/dev/null && echo iptables-legacy
  [[ -s /proc/net/ip6_tables_names ]] && command -v ip6tables-legacy >/dev/null && echo ip6tables-legacy
  return 0
}
PROCS=(kube-proxy kubelet kube-scheduler kube-controller-manager dockerd kube-apiserver etcd)

# Seconds since the script started, so that a slow (cold) run shows where its time went.
log() { printf 'cluster: [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }
skip() { printf 'cluster: SKIP: %s\n' "$*" >&2; exit 3; }
kubectl() { "$ENVTEST/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

# ---------------------------------------------------------------- processes

start_proc() {  # NAME CMD...: in its own session, logs in $STATE/logs/NAME.log
  local name="$1"; shift
  # Not with the lock of this script (fd 7): a daemon holding it would block every later call.
  setsid "$@" </dev/null >"$STATE/logs/$name.log" 2>&1 7>&- &
  echo $! >"$STATE/run/$name.pid"
}

proc_alive() {  # NAME: the recorded pid is alive and still that program
  local pid
  pid="$(cat "$STATE/run/$1.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$1"
}

stop_proc() {  # NAME [GRACE]: TERM, then KILL after GRACE seconds; only the pid we started
  local name="$1" grace="${2:-15}" pid i
  proc_alive "$name" || { rm -f "$STATE/run/$name.pid"; return 0; }
  pid="$(cat "$STATE/run/$name.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop in ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$STATE/run/$name.pid"
}

wait_for() {  # WHAT SECONDS CMD...: poll CMD until it succeeds; show the log tail on timeout
  local what="$1" secs="$2" i; shift 2
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  local name="${what%% *}"
  [[ -f "$STATE/logs/$name.log" ]] && tail -n 25 "$STATE/logs/$name.log" >&2
  die "$what not ready after ${secs}s"
}

port_free() { ! ss -Hltn "( sport = :$2 )" 2>/dev/null | awk '{print $4}' | grep -q -- "^$1:$2$\|^\*:$2$\|^0.0.0.0:$2$\|^\[::\]:$2$"; }

# ---------------------------------------------------------------- preflight

install_packages() {
  local need=() pkg
  command -v dockerd >/dev/null || need+=(docker.io)
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  for pkg in iptables conntrack socat ipset jq curl openssl debootstrap; do
    command -v "$pkg" >/dev/null || need+=("$pkg")
  done
  ((${#need[@]})) || return 0
  command -v apt-get >/dev/null || skip "no apt-get to install ${need[*]}"
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # No init system here, but a package's maintainer script must not start a second dockerd.
  local policy=/usr/sbin/policy-rc.d made=""
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod +x $policy; made=1; fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || { [[ -z $made ]] || rm -f $policy; die "apt-get install ${need[*]} failed"; }
  [[ -z $made ]] || rm -f $policy
}

preflight() {
  [[ "$(id -u)" == 0 ]] || skip "a kubelet needs root"
  [[ "$(uname -s)" == Linux ]] || skip "a kubelet needs Linux"
  [[ -d /sys/fs/cgroup ]] && grep -q cgroup /proc/mounts || skip "no cgroup filesystem mounted"
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]] && ! grep -q ' /sys/fs/cgroup/memory cgroup ' /proc/mounts; then
    skip "cgroup v2 only: the 1.20 kubelet with dockershim needs cgroup v1 here"
  fi
  ip link add nexus-probe0 type bridge 2>/dev/null || skip "cannot create network devices (no CAP_NET_ADMIN?)"
  ip link del nexus-probe0
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null || true
  install_packages
  iptables -w -S >/dev/null 2>&1 || skip "iptables does not work here"
  local p
  for p in "127.0.0.1 $ETCD_PORT" "127.0.0.1 $((ETCD_PORT + 1))" "127.0.0.1 10257" "127.0.0.1 10259" \
           "127.0.0.1 10248" "127.0.0.1 10249" "127.0.0.1 10256"; do
    # shellcheck disable=SC2086
    port_free $p || die "port ${p#* } on ${p% *} is in use; a cluster needs it"
  done
}

# ---------------------------------------------------------------- host state (baseline)

record_baseline() {
  mkdir -p "$BASELINE"
  local s t cmd
  : >"$BASELINE/sysctl"
  for s in "${SYSCTLS[@]}"; do
    [[ -e "/proc/sys/${s//.//}" ]] && printf '%s=%s\n' "$s" "$(sysctl -n "$s")" >>"$BASELINE/sysctl"
  done
  for cmd in $(ipt_cmds); do
    for t in "${TABLES[@]}"; do
      { "$cmd" -w -t "$t" -S 2>/dev/null || true; } | awk '/^-N/ {print $2}' >"$BASELINE/$cmd-$t.chains"
    done
  done
  : >"$BASELINE/paths"
  for s in "${STRAY_PATHS[@]}"; do [[ -e $s ]] && echo "$s" >>"$BASELINE/paths"; done
  ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 >"$BASELINE/links"
  : >"$BASELINE/cgroups"
  for s in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/docker; do [[ -d $s ]] && echo "$s" >>"$BASELINE/cgroups"; done
  cp -r "$BASELINE" "$STATE/baseline"
}

restore_sysctls() {
  local line name want
  [[ -f "$STATE/baseline/sysctl" ]] || return 0
  while IFS= read -r line; do
    name="${line%%=*}"; want="${line#*=}"
    [[ -e "/proc/sys/${name//.//}" ]] || continue
    [[ "$(sysctl -n "$name")" == "$want" ]] || sysctl -qw "$name=$want" || log "could not restore $name=$want"
  done <"$STATE/baseline/sysctl"
}

new_chains() {  # CMD TABLE [BASELINE_DIR]: chains of ours that did not exist before up
  local cmd="$1" t="$2" base="${3:-$STATE/baseline}"
  { "$cmd" -w -t "$t" -S 2>/dev/null || true; } | awk '/^-N/ {print $2}' | grep -E "$CHAIN_RE" \
    | grep -vxF -f <(cat "$base/$cmd-$t.chains" 2>/dev/null; echo '#none#') || true
}

remove_chains() {
  local cmd t chain line target
  for cmd in $(ipt_cmds); do
    for t in "${TABLES[@]}"; do
      mapfile -t ours < <(new_chains "$cmd" "$t")
      ((${#ours[@]})) || continue
      # First the jumps into our chains from chains that are not ours (INPUT, FORWARD, ...).
      while IFS= read -r line; do
        local -a args
        eval "args=($line)"
        chain="${args[1]}"; target=""
        for ((i = 2; i < ${#args[@]}; i++)); do
          [[ ${args[i]} == -j || ${args[i]} == -g ]] && target="${args[i + 1]:-}"
        done
        [[ -n $target ]] || continue
        if printf '%s\n' "${ours[@]}" | grep -qxF -- "$target" && ! printf '%s\n' "${ours[@]}" | grep -qxF -- "$chain"; then
          "$cmd" -w -t "$t" -D "${args[@]:1}" 2>/dev/null || log "could not delete: $cmd -t $t $line"
        fi
      done < <("$cmd" -w -t "$t" -S 2>/dev/null | grep '^-A ')
      for chain in "${ours[@]}"; do "$cmd" -w -t "$t" -F "$chain" 2>/dev/null || true; done
      for chain in "${ours[@]}"; do "$cmd" -w -t "$t" -X "$chain" 2>/dev/null || log "could not delete chain $t/$chain"; done
    done
  done
}

# ---------------------------------------------------------------- network

setup_network() {
  log "network: $DUMMY $NODE_IP, pods $POD_CIDR, services $SVC_CIDR (local routes only)"
  # A dummy device; kernels built without one have ifb, which drops what it is sent just so.
  ip link add "$DUMMY" type dummy 2>/dev/null || ip link add "$DUMMY" type ifb \
    || die "cannot create the $DUMMY device (neither dummy nor ifb)"
  ip addr add "$NODE_IP/24" dev "$DUMMY"
  ip link set "$DUMMY" up
  # Until cni0 exists (and for every address without a pod), pod and service addresses go to
  # the dummy device, which drops what it is given: never to the default route.
  ip route add "$POD_CIDR" dev "$DUMMY" src "$NODE_IP"
  ip route add "$SVC_CIDR" dev "$DUMMY" src "$NODE_IP"
  # What pods send is routed by a table of its own, which knows only the cluster's ranges:
  # anything else is unreachable, so no packet from a pod can take the default route, whatever
  # the filter rules say. The bridge is created here (the CNI plugin adopts it) for the table.
  ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" up
  ip route add "$NODE_POD_CIDR" dev "$BRIDGE" table "$POD_RT_TABLE"
  ip route add "$POD_CIDR" dev "$DUMMY" table "$POD_RT_TABLE"
  ip route add "$SVC_CIDR" dev "$DUMMY" table "$POD_RT_TABLE"
  ip route add unreachable default table "$POD_RT_TABLE"
  ip rule add pref "$POD_RT_PREF" iif "$BRIDGE" lookup "$POD_RT_TABLE"
  local addr dev
  for addr in "${NODE_IP}" "${NODE_POD_CIDR%.*}.10" "${POD_CIDR%.*.*}.200.1" "$API_SVC_IP" "$NEXUS_SVC_IP"; do
    dev="$(ip -o route get "$addr" | sed -n 's/.* dev \([^ ]*\).*/\1/p')"
    [[ $dev == "$DUMMY" || $dev == lo ]] || die "route check: $addr would leave through $dev"
  done
  # Pods talk to each other, to Services and to the node; nothing else is forwarded, in or out.
  # Locally sent packets for the cluster's ranges may use only local devices.
  iptables -w -N NEXUS-FORWARD
  iptables -w -A NEXUS-FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  iptables -w -A NEXUS-FORWARD -i "$BRIDGE" -j REJECT
  iptables -w -A NEXUS-FORWARD -o "$BRIDGE" -j REJECT
  iptables -w -I FORWARD 1 -j NEXUS-FORWARD
  iptables -w -N NEXUS-OUTPUT
  for dev in lo "$BRIDGE" "$DUMMY"; do iptables -w -A NEXUS-OUTPUT -o "$dev" -j RETURN; done
  for addr in "$POD_CIDR" "$SVC_CIDR" "$NODE_NET"; do iptables -w -A NEXUS-OUTPUT -d "$addr" -j REJECT; done
  iptables -w -I OUTPUT 1 -j NEXUS-OUTPUT
  sysctl -qw net.ipv4.ip_forward=1
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  return 0
}

# ---------------------------------------------------------------- certificates and identities

make_pki() {
  local d="$STATE/pki" name
  mkdir -p "$d"
  ( cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=nexus-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    sign() {  # NAME SUBJECT EXT
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -out "$1.crt" \
        -extfile <(printf '%s\n' "$3") 2>/dev/null
      rm -f "$1.csr"
    }
    sign apiserver "/CN=kube-apiserver" "subjectAltName=IP:$NODE_IP,IP:$API_SVC_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  )
  # Static tokens: the components' and the admin's identities.
  : >"$d/tokens.csv"
  chmod 600 "$d/tokens.csv"
  declare -gA TOKENS=()
  for name in admin kube-controller-manager kube-scheduler kube-proxy kubelet; do
    TOKENS[$name]="$(openssl rand -hex 24)"
  done
  {
    echo "${TOKENS[admin]},admin,admin,system:masters"
    echo "${TOKENS[kube-controller-manager]},system:kube-controller-manager,kcm"
    echo "${TOKENS[kube-scheduler]},system:kube-scheduler,scheduler"
    echo "${TOKENS[kube-proxy]},system:kube-proxy,kube-proxy"
    echo "${TOKENS[kubelet]},system:node:$NODE_NAME,kubelet,system:nodes"
  } >>"$d/tokens.csv"
  write_kubeconfig "$STATE/kubeconfig" admin "${TOKENS[admin]}"
  for name in kube-controller-manager kube-scheduler kube-proxy kubelet; do
    write_kubeconfig "$STATE/$name.kubeconfig" "$name" "${TOKENS[$name]}"
  done
}

write_kubeconfig() {  # PATH USER TOKEN
  (umask 077; cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: nexus-local
    cluster:
      server: https://$NODE_IP:$API_PORT
      certificate-authority: $STATE/pki/ca.crt
users:
  - name: $2
    user:
      token: $3
contexts:
  - name: nexus-local
    context: {cluster: nexus-local, user: $2}
current-context: nexus-local
EOF
  )
}

# ---------------------------------------------------------------- components

start_control_plane() {
  log "starting etcd and kube-apiserver"
  start_proc etcd "$ENVTEST/etcd" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync
  wait_for "etcd" 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
  local pki="$STATE/pki"
  # Pods reach the API server through the kubernetes Service, so it binds and advertises the
  # node address, never loopback.
  start_proc kube-apiserver "$ENVTEST/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" --insecure-port 0 \
    --cert-dir "$STATE/apiserver" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-cluster-ip-range "$SVC_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --token-auth-file "$pki/tokens.csv" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --allow-privileged=true --event-ttl 1h
  wait_for "kube-apiserver" 90 kubectl get --raw /readyz
  log "starting kube-controller-manager and kube-scheduler"
  local kcm="$STATE/kube-controller-manager.kubeconfig" sched="$STATE/kube-scheduler.kubeconfig"
  start_proc kube-controller-manager "$ENVTEST/kube-controller-manager" \
    --kubeconfig "$kcm" --authentication-kubeconfig "$kcm" --authorization-kubeconfig "$kcm" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 10257 --port 0 \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=true \
    --controllers '*,-csrsigning,-cloud-node-lifecycle,-service,-route,-nodeipam'
  start_proc kube-scheduler "$NODEBIN/kube-scheduler" \
    --kubeconfig "$sched" --authentication-kubeconfig "$sched" --authorization-kubeconfig "$sched" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 10259 --port 0
}

start_docker() {
  log "starting dockerd (images in $DOCKER_ROOT)"
  mkdir -p "$STATE/docker" "$DOCKER_ROOT"
  echo '{}' >"$STATE/docker/daemon.json"
  # dockerd leaves the bridge, iptables, forwarding and masquerading alone: pods are wired by
  # CNI, and image builds use the host network.
  start_proc dockerd dockerd -H "unix://$DOCKER_SOCK" --config-file "$STATE/docker/daemon.json" \
    --data-root "$DOCKER_ROOT" --exec-root "$STATE/docker/exec" --pidfile "$STATE/docker/docker.pid" \
    --storage-driver overlay2 --bridge none --iptables=false --ip-forward=false --ip-masq=false \
    --userland-proxy=false --exec-opt native.cgroupdriver=cgroupfs --log-driver json-file \
    --log-opt max-size=10m
  wait_for "dockerd" 60 "${DOCKER[@]}" version
}

start_node() {
  log "starting kubelet and kube-proxy"
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/cache" "$STATE/cni/networks" "$STATE/kubelet" "$STATE/dockershim"
  cat >"$STATE/cni/net.d/10-nexus.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "nexus",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE/cni/networks",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  # No cluster DNS and no nameserver: a pod's lookups fail at once instead of leaving the node.
  printf '# nexus local cluster: no DNS\noptions ndots:1 timeout:1 attempts:1\n' >"$STATE/resolv.conf"
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
resolvConf: $STATE/resolv.conf
clusterDomain: cluster.local
serializeImagePulls: false
# Local images cannot be pulled again: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# CPU limits count for scheduling but do not throttle: on a 2-core node, a throttled Python
# process starts so slowly that its liveness probe kills it.
cpuCFSQuota: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
rotateCertificates: false
EOF
  start_proc kubelet "$NODEBIN/kubelet" --config "$STATE/kubelet.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" \
    --container-runtime docker --docker-endpoint "unix://$DOCKER_SOCK" \
    --container-runtime-endpoint "unix://$STATE/dockershim.sock" \
    --image-service-endpoint "unix://$STATE/dockershim.sock" \
    --pod-infra-container-image "$PAUSE_IMAGE" \
    --network-plugin cni --cni-bin-dir /usr/lib/cni --cni-conf-dir "$STATE/cni/net.d" \
    --cni-cache-dir "$STATE/cni/cache" \
    --experimental-dockershim-root-directory "$STATE/dockershim" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --register-node=true
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $POD_CIDR
mode: iptables
nodePortAddresses: ["$NODE_NET"]
oomScoreAdj: 0
# Zeros leave the machine's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start_proc kube-proxy "$NODEBIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
  wait_for "kubelet (node Ready)" 120 node_ready
}

node_ready() {
  [[ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# ---------------------------------------------------------------- images

image_exists() { "${DOCKER[@]}" image inspect "$1" >/dev/null 2>&1; }

build_images() {
  local ctx="$STATE/build/pause" tag
  tag="$(cat "$NODEBIN/pause.version")"
  PAUSE_IMAGE="$PAUSE_IMAGE_REPO:$tag"
  if ! image_exists "$PAUSE_IMAGE"; then
    log "image $PAUSE_IMAGE (static pause from the kubernetes source)"
    mkdir -p "$ctx"
    cp "$NODEBIN/pause" "$ctx/pause"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
    "${DOCKER[@]}" build -q -t "$PAUSE_IMAGE" "$ctx" >/dev/null
  fi
  if ! image_exists "$BASE_IMAGE"; then
    local tarball
    tarball="$("$ROOT/hack/local-base-image.sh")"
    log "image $BASE_IMAGE (docker import of $tarball)"
    "${DOCKER[@]}" import \
      --change 'ENV PATH=/opt/python3.12/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$BASE_IMAGE" >/dev/null
  fi
  log "image $NODE_IMAGE (images/astromesh-node)"
  "${DOCKER[@]}" build -q --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "ASTROMESH_VERSION=$ASTROMESH_VERSION" -t "$NODE_IMAGE" "$ROOT/images/astromesh-node" >/dev/null \
    || die "building $NODE_IMAGE failed"
  log "image $IMG (make docker-build)"
  make -s -C "$ROOT" docker-build IMG="$IMG" BASE_IMAGE="$BASE_IMAGE" \
    CONTAINER_TOOL="${DOCKER[*]}" DOCKER_BUILD_ARGS="-q --network host" >/dev/null \
    || die "make docker-build failed"
}

# ---------------------------------------------------------------- Nexus

deploy_nexus() {
  log "deploying Nexus (make deploy IMG=$IMG DEPLOY_DIR=config/local)"
  kubectl get namespace nexus-system >/dev/null 2>&1 || kubectl create namespace nexus-system >/dev/null
  if ! kubectl -n nexus-system get secret nexus-jwt >/dev/null 2>&1; then
    kubectl -n nexus-system create secret generic nexus-jwt \
      --from-literal=secret="$(openssl rand -base64 48 | tr -d '\n')" >/dev/null
  fi
  # The admission webhooks' serving certificate (config/default mounts it; failurePolicy is
  # Fail, so without it nothing of Nexus could be created). The manager writes the CA into the
  # webhook configurations itself. The API server runs on the node and reaches the webhook
  # Service's endpoint (the manager pod's IP) directly, so the service name need not resolve.
  if ! kubectl -n nexus-system get secret nexus-webhook-server-cert >/dev/null 2>&1; then
    local certs
    certs="$(mktemp -d)"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-$ROOT/.venv/bin/python}" -m nexus.runtime.webhook \
      --host nexus-webhook-service.nexus-system.svc --out "$certs" >/dev/null \
      || { rm -rf "$certs"; die "could not make the webhook certificate"; }
    kubectl -n nexus-system create secret generic nexus-webhook-server-cert --from-file="$certs" >/dev/null \
      || { rm -rf "$certs"; die "could not create the webhook certificate Secret"; }
    rm -rf "$certs"
  fi
  # The SQLite claim's volume: a folder on the node, writable by the manager's uid.
  mkdir -p "$STATE/volumes/nexus-data"
  chown 65532:65532 "$STATE/volumes/nexus-data"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: nexus-data
  labels: {app.kubernetes.io/name: nexus}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  claimRef: {namespace: nexus-system, name: nexus-data}
  hostPath: {path: $STATE/volumes/nexus-data, type: Directory}
EOF
  make -s -C "$ROOT" deploy IMG="$IMG" DEPLOY_DIR=config/local KUBECTL="$ENVTEST/kubectl --kubeconfig $STATE/kubeconfig" >/dev/null
  if ! kubectl -n nexus-system rollout status deployment/nexus-controller-manager --timeout=180s >/dev/null; then
    kubectl -n nexus-system get pods -o wide >&2 || true
    kubectl -n nexus-system logs deployment/nexus-controller-manager --tail=30 >&2 || true
    die "the manager Deployment did not become available"
  fi
  wait_for "nexus-api ($NEXUS_URL)" 60 curl -fsS "$NEXUS_URL/readyz"
}

api() {  # METHOD PATH [curl args]: body on stdout, fails on HTTP >= 400
  local method="$1" path="$2"; shift 2
  curl -fsS -X "$method" "$NEXUS_URL$path" -H 'Content-Type: application/json' "$@"
}

seed_dev_account() {
  log "seeding the dev account $DEV_EMAIL"
  api POST /auth/register -d "{\"email\":\"$DEV_EMAIL\",\"password\":\"$DEV_PASSWORD\",\"displayName\":\"Developer\"}" \
    >/dev/null 2>&1 || true  # already registered: a replacement manager kept the database
  local token tenant phase key i
  token="$(api POST /auth/login -d "{\"email\":\"$DEV_EMAIL\",\"password\":\"$DEV_PASSWORD\"}" | jq -r .accessToken)"
  tenant="$(api GET /api/v1/tenants -H "Authorization: Bearer $token" | jq -r '.[0].id // empty')"
  if [[ -z $tenant ]]; then
    tenant="$(api POST /api/v1/tenants -H "Authorization: Bearer $token" \
      -d "{\"displayName\":\"$DEV_TENANT\",\"nodeProfile\":\"full\"}" | jq -r .id)"
  fi
  for ((i = 0; i < 180; i++)); do
    phase="$(api GET "/api/v1/tenants/$tenant" -H "Authorization: Bearer $token" | jq -r .phase)"
    [[ $phase == Ready ]] && break
    sleep 1
  done
  if [[ $phase != Ready ]]; then
    kubectl get pods -A -o wide >&2 || true
    die "the dev tenant is $phase after 180s (its node pod: kubectl get pods -A)"
  fi
  local ns
  ns="$(api GET "/api/v1/tenants/$tenant" -H "Authorization: Bearer $token" | jq -r .namespace)"
  wait_for "the dev tenant's node pod" 60 kubectl -n "$ns" get pod -l app.kubernetes.io/name=astromesh-node -o name --no-headers -o jsonpath='{.items[0].metadata.name}'
  if ! kubectl -n "$ns" wait pod -l app.kubernetes.io/name=astromesh-node --for=condition=Ready --timeout=180s >/dev/null; then
    kubectl -n "$ns" describe pods >&2 || true
    die "the dev tenant's node pod (namespace $ns) is not Ready"
  fi
  key="$(api POST "/api/v1/tenants/$tenant/keys" -H "Authorization: Bearer $token" -d '{"label":"dev"}' | jq -r .rawKey)"
  (umask 077; cat >"$STATE/dev-account.env" <<EOF
NEXUS_URL=$NEXUS_URL
NEXUS_DEV_EMAIL=$DEV_EMAIL
NEXUS_DEV_PASSWORD=$DEV_PASSWORD
NEXUS_DEV_TENANT=$tenant
NEXUS_DEV_API_KEY=$key
EOF
  )
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local t0=$SECONDS
  preflight
  if [[ -e "$STATE/up" ]] && proc_alive kube-apiserver && proc_alive kubelet; then
    log "already up"; print_ready; return 0
  fi
  [[ -e "$STATE" ]] && { log "leftovers of an earlier cluster in $STATE: taking them down first"; cmd_down; }
  log "preparing the binaries (the first run builds them from Debian sources: minutes)"
  ENVTEST="$("$ROOT/hack/setup-envtest.sh")"
  NODEBIN="$("$ROOT/hack/setup-cluster-bin.sh")"
  mkdir -p "$STATE/logs" "$STATE/run"
  record_baseline
  # From here on, a failure leaves a half-built cluster: take it down again.
  trap 'rc=$?; if ((rc)); then log "up failed (exit $rc); see $STATE/logs; taking the cluster down"; cp -r "$STATE/logs" "$CACHE/last-failed-logs" 2>/dev/null || true; cmd_down || true; fi' EXIT
  setup_network
  make_pki
  start_control_plane
  start_docker
  build_images
  start_node
  deploy_nexus
  seed_dev_account
  touch "$STATE/up"
  trap - EXIT
  log "up in $((SECONDS - t0))s"
  print_ready
}

print_ready() {
  echo "Nexus ready at $NEXUS_URL"
  echo "  kubeconfig   $STATE/kubeconfig"
  [[ -f "$STATE/dev-account.env" ]] && sed 's/^/  /' "$STATE/dev-account.env"
  echo "  try:  NEXUS_URL=$NEXUS_URL hack/walkthrough.sh"
  echo "  stop: make cluster-down"
}

unmount_under() {  # DIR...: every mount point below DIR, deepest first
  local d m
  for d in "$@"; do
    [[ -n $d ]] || continue
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done < <(awk -v r="$d" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  done
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/docker; do
    [[ -d $d ]] || continue
    grep -qxF "$d" "$STATE/baseline/cgroups" 2>/dev/null && continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d $d ]] && log "cgroup $d is still busy"
  done
  return 0
}

cmd_down() {
  log "stopping the cluster"
  # The kubelet first, so that it recreates nothing; then every container, then the rest.
  local name
  for name in kube-proxy kubelet kube-scheduler kube-controller-manager; do stop_proc "$name" 10; done
  if proc_alive dockerd; then
    local ids
    ids="$("${DOCKER[@]}" ps -aq 2>/dev/null || true)"
    # shellcheck disable=SC2086
    [[ -z $ids ]] || "${DOCKER[@]}" rm -f -v $ids >/dev/null 2>&1 || log "could not remove every container"
  fi
  stop_proc dockerd 30
  stop_proc kube-apiserver 10
  stop_proc etcd 10
  unmount_under "$STATE/" "$DOCKER_ROOT/" /var/lib/kubelet/
  while ip rule del pref "$POD_RT_PREF" 2>/dev/null; do :; done
  ip route flush table "$POD_RT_TABLE" 2>/dev/null || true
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  ip link show docker0 >/dev/null 2>&1 && ! grep -qx docker0 "$STATE/baseline/links" 2>/dev/null && ip link del docker0
  ip link show "$DUMMY" >/dev/null 2>&1 && ip link del "$DUMMY"  # its routes go with it
  remove_chains
  remove_cgroups
  restore_sysctls
  local p
  for p in "${STRAY_PATHS[@]}"; do
    [[ -e $p ]] || continue
    grep -qxF "$p" "$STATE/baseline/paths" 2>/dev/null && continue
    rm -rf "$p"
  done
  rm -rf "$STATE"
  log "down"
}

cmd_check_clean() {
  local bad=() t cmd d p
  # Processes: anything running from the state folder or the image store, or in a pod cgroup.
  while read -r p; do
    [[ -n $p && $p != "$$" ]] && bad+=("process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120)")
  done < <(pgrep -f -- "$STATE/|$DOCKER_ROOT|$CACHE/bin-" || true)
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/docker; do
    [[ -d $d ]] && ! grep -qxF "$d" "$BASELINE/cgroups" 2>/dev/null && bad+=("cgroup $d")
  done
  while read -r p; do bad+=("mount $p"); done < <(awk -v a="$STATE/" -v b="$DOCKER_ROOT/" -v c=/var/lib/kubelet/ \
    'index($5, a) == 1 || index($5, b) == 1 || index($5, c) == 1 {print $5}' /proc/self/mountinfo)
  for d in "$DUMMY" "$BRIDGE" docker0; do ip link show "$d" >/dev/null 2>&1 && bad+=("network device $d"); done
  while read -r d; do bad+=("network device $d (veth of $BRIDGE)"); done < <(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}')
  for p in "$POD_CIDR" "$SVC_CIDR" "$NODE_NET"; do
    ip route show "$p" | grep -q . && bad+=("route $p")
  done
  ip rule show pref "$POD_RT_PREF" | grep -q . && bad+=("ip rule $POD_RT_PREF")
  ip route show table "$POD_RT_TABLE" 2>/dev/null | grep -q . && bad+=("routing table $POD_RT_TABLE")
  for cmd in $(ipt_cmds); do
    for t in "${TABLES[@]}"; do
      while read -r d; do [[ -n $d ]] && bad+=("$cmd chain $t/$d"); done < <(new_chains "$cmd" "$t" "$BASELINE")
    done
  done
  if [[ -f "$BASELINE/sysctl" ]]; then
    while IFS= read -r p; do
      d="${p%%=*}"
      [[ -e "/proc/sys/${d//.//}" ]] || continue
      [[ "$(sysctl -n "${p%%=*}")" == "${p#*=}" ]] || bad+=("sysctl ${p%%=*}=$(sysctl -n "${p%%=*}") (was ${p#*=})")
    done <"$BASELINE/sysctl"
  fi
  for p in "${STRAY_PATHS[@]}" "$STATE"; do
    [[ -e $p ]] && ! grep -qxF "$p" "$BASELINE/paths" 2>/dev/null && bad+=("path $p")
  done
  if ((${#bad[@]})); then
    printf 'cluster: left behind: %s\n' "${bad[@]}" >&2
    return 1
  fi
  log "clean: no process, mount, device, route, iptables chain, sysctl change or file of a cluster left"
}

cmd_status() {
  local name
  for name in "${PROCS[@]}"; do
    if proc_alive "$name"; then echo "$name running (pid $(cat "$STATE/run/$name.pid"))"; else echo "$name stopped"; fi
  done
  [[ -f "$STATE/up" ]] && print_ready
  return 0
}

cmd_env() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export NEXUS_URL=$NEXUS_URL"
  echo "export DOCKER_HOST=unix://$DOCKER_SOCK"
  echo "export NEXUS_CLUSTER_DIR=$STATE"
}

with_lock() {
  mkdir -p "$CACHE"
  exec 7>"$CACHE/.cluster-sh.lock"
  flock -n 7 || { log "another hack/cluster.sh is running; waiting for it"; flock 7; }
  "$@"
}

case "${1:-}" in
  up) with_lock cmd_up ;;
  down) with_lock cmd_down ;;
  check-clean) cmd_check_clean ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|check-clean|status|env" >&2; exit 2 ;;
esac
