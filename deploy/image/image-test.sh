#!/usr/bin/env bash
# make image-test: build the real Dockerfile (CPU ONNX Runtime) on a local Debian base
# with podman, run it the way the Kubernetes Deployment does (read-only root, a tmpfs
# on /tmp, the image's non-root user, no capabilities) and check it from the host with
# the project's client: gRPC health, real Sample RPCs, /metrics, the HTTP API and page,
# SIGTERM drain and exit 0.
#
# Needs root, podman (with buildah, runc or crun), debootstrap, network access to a
# Debian mirror (first run only) and to PyPI (the build's pip), and the repository's
# .venv with the server extra (make's $(VENV)/.server). Minutes on the first run: the
# base image is cached under BASE_TAG, the build's layers by podman.
#
# Overrides (environment): BASE_TAG, IMAGE_TAG, ONNXRUNTIME (default: onnxruntime,
# the CPU package), VENV, DEBIAN_SUITE, DEBIAN_MIRROR, BUILD_CA_BUNDLE (the host's
# CA bundle, empty: none), BASE_TIMEOUT_S, BUILD_TIMEOUT_S, READY_TIMEOUT_S,
# STOP_TIMEOUT_S.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
suite=${DEBIAN_SUITE:-bookworm}
base_tag=${BASE_TAG:-localhost/ganserve-base:$suite}
image_tag=${IMAGE_TAG:-localhost/ganserve:image-test}
onnxruntime=${ONNXRUNTIME:-onnxruntime}
venv=${VENV:-$root/.venv}
[[ $venv == /* ]] || venv=$PWD/$venv
base_timeout=${BASE_TIMEOUT_S:-900}
build_timeout=${BUILD_TIMEOUT_S:-1800}
ready_timeout=${READY_TIMEOUT_S:-120}
stop_timeout=${STOP_TIMEOUT_S:-30}
ca_bundle=${BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
container=ganserve-image-test-$$
# See containers.conf: the ulimit and cgroup settings this needs where root is sandboxed.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

passed=()
failed=()
timings=()
scratch=$(mktemp -d)

pass() {
  passed+=("$1")
  echo "PASS $1"
}
fail() {
  failed+=("$1")
  echo "FAIL $1" >&2
}
now() { date +%s.%N; }
# elapsed START -> seconds since START, one decimal
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# human BYTES -> "123.4 MB"
human() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

summary() {
  echo
  echo "== image-test summary =="
  for t in "${timings[@]}"; do echo "  time  $t"; done
  echo "  ${#passed[@]} passed, ${#failed[@]} failed"
  for f in "${failed[@]}"; do echo "  FAIL  $f"; done
  if ((${#failed[@]})); then
    echo "image-test: FAILED"
  else
    echo "image-test: PASSED"
  fi
}

cleanup() {
  podman rm --force --ignore --time 0 "$container" >/dev/null 2>&1
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'echo "image-test: interrupted" >&2; exit 130' INT TERM

# Stop here: the steps after this one need what it made.
abort() {
  fail "$1"
  summary
  exit 1
}

container_state() { podman container inspect --format '{{.State.Status}}' "$container" 2>/dev/null; }

show_logs() {
  echo "--- container log (last 40 lines) ---" >&2
  podman logs "$container" 2>&1 | tail -n 40 >&2
  echo "---" >&2
}

# ------------------------------------------------------------------ preflight
t_all=$(now)
[[ $(id -u) == 0 ]] || abort "preflight: run as root (rootful podman; debootstrap)"
for tool in podman debootstrap timeout; do
  command -v "$tool" >/dev/null || abort "preflight: $tool not found (apt-get install podman buildah runc debootstrap)"
done
[[ -x $venv/bin/ganserve && -x $venv/bin/python ]] ||
  abort "preflight: no client in $venv (make image-test installs it; or set VENV)"
py=$venv/bin/python
version=$("$py" -c 'import importlib.metadata as m; print(m.version("ganserve"))') ||
  abort "preflight: ganserve is not installed in $venv"
echo "podman $(podman version --format '{{.Client.Version}}'), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), storage $(podman info --format '{{.Store.GraphDriverName}}'), CONTAINERS_CONF=$CONTAINERS_CONF"

# --------------------------------------------------------------- base image
t=$(now)
# The cache key: the recipe (build-base.sh) and the suite. A changed recipe rebuilds.
recipe=$(cat "$here/build-base.sh" <(echo "$suite") | sha256sum | cut -c1-16)
cached=$(podman image inspect --format '{{index .Labels "ganserve.base-recipe"}}' "$base_tag" 2>/dev/null)
if [[ $cached == "$recipe" ]]; then
  echo "base image $base_tag (recipe $recipe) exists: reused"
  timings+=("base image: $(elapsed "$t") s (cached)")
else
  old=$(podman image inspect --format '{{.Id}}' "$base_tag" 2>/dev/null)
  DEBIAN_SUITE=$suite timeout "$base_timeout" "$here/build-base.sh" "$base_tag" \
    "ganserve.base-recipe=$recipe" || abort "base image: debootstrap + podman import of $base_tag"
  # The previous base, if nothing else uses it (an image built on it keeps it).
  [[ -z $old ]] || podman rmi "$old" >/dev/null 2>&1 || true
  timings+=("base image: $(elapsed "$t") s (debootstrap + import)")
fi
base_size=$(podman image inspect --format '{{.Size}}' "$base_tag") || abort "base image: $base_tag missing"
pass "base image $base_tag ($(human "$base_size"))"

# -------------------------------------------------------------------- build
t=$(now)
echo "podman build: BASE_IMAGE=$base_tag ONNXRUNTIME=$onnxruntime VERSION=$version -> $image_tag"
# --network host: the RUN steps reach PyPI over the host's network, no bridge network
# (netavark, iptables) involved. --layers: an unchanged source tree rebuilds from cache.
# Where egress goes through a TLS-intercepting proxy (its CA added on the host) the
# build's pip fails with CERTIFICATE_VERIFY_FAILED against Debian's CA bundle. The
# RUN steps see the host's bundle instead (the base's pip.conf points pip at that
# path); a bind mount over an existing file: nothing of it lands in the image.
trust=()
if [[ -n $ca_bundle && -r $ca_bundle ]]; then
  trust=(--volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")
  echo "the build's RUN steps trust the host's CA bundle $ca_bundle (BUILD_CA_BUNDLE= to not)"
fi
previous=$(podman image inspect --format '{{.Id}}' "$image_tag" 2>/dev/null)
if timeout "$build_timeout" podman build --network host --layers "${trust[@]}" \
  --build-arg BASE_IMAGE="$base_tag" \
  --build-arg ONNXRUNTIME="$onnxruntime" \
  --build-arg VERSION="$version" \
  --tag "$image_tag" --file "$root/Dockerfile" "$root" >"$scratch/build.log" 2>&1; then
  steps=$(grep -E '^\[[0-9]+/[0-9]+\] STEP' "$scratch/build.log" | grep -vc ': FROM ')
  cached=$(grep -c '^--> Using cache' "$scratch/build.log")
  timings+=("build: $(elapsed "$t") s ($cached of $steps steps from cache)")
else
  tail -n 40 "$scratch/build.log" >&2
  abort "build of the Dockerfile with BASE_IMAGE=$base_tag ONNXRUNTIME=$onnxruntime"
fi
# The image this build replaced under the tag (layers in the build cache stay).
current=$(podman image inspect --format '{{.Id}}' "$image_tag")
[[ -z $previous || $previous == "$current" ]] || podman rmi "$previous" >/dev/null 2>&1 || true
size=$(podman image inspect --format '{{.Size}}' "$image_tag")
label=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$image_tag")
pass "build $image_tag: $(human "$size"), version label $label"

# ---------------------------------------------------------------------- run
read -r grpc_port metrics_port http_port < <("$py" "$here/check_server.py" ports) ||
  abort "run: no free ports"
target=127.0.0.1:$grpc_port
t=$(now)
# As the Deployment runs it: read-only root with only /tmp writable (podman's own
# tmpfs on /run, /var/tmp are turned off), the image's user, no capabilities.
# --network host: no bridge network or port mapping needed; GANSERVE_HOST keeps the
# server on loopback, on ports that were free.
podman run --detach --name "$container" \
  --network host \
  --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,nosuid,nodev,size=64m \
  --cap-drop ALL --security-opt no-new-privileges \
  --env GANSERVE_HOST=127.0.0.1 \
  --env GANSERVE_PORT="$grpc_port" \
  --env GANSERVE_METRICS_PORT="$metrics_port" \
  --env GANSERVE_HTTP_PORT="$http_port" \
  "$image_tag" >/dev/null || abort "run: podman run $image_tag"

# Poll health until SERVING, the container exits, or the deadline.
deadline=$(($(date +%s) + ready_timeout))
status=""
while :; do
  status=$("$venv/bin/ganserve" health --target "$target" --timeout 2 2>/dev/null) && [[ $status == SERVING ]] && break
  state=$(container_state)
  if [[ $state != running ]]; then
    show_logs
    abort "run: the container is $state before it served (exit code $(podman container inspect --format '{{.State.ExitCode}}' "$container"))"
  fi
  if (($(date +%s) >= deadline)); then
    show_logs
    abort "health: not SERVING within ${ready_timeout} s (last: ${status:-no answer})"
  fi
  sleep 0.5
done
timings+=("start to SERVING: $(elapsed "$t") s")
generator=$("$venv/bin/ganserve" health --target "$target" --service ganserve.v1.Generator --timeout 5 2>&1)
if [[ $generator == SERVING ]]; then
  pass "gRPC health on $target: \"\" SERVING, ganserve.v1.Generator SERVING"
else
  fail "gRPC health of ganserve.v1.Generator: $generator"
fi

# The container's user and filesystem, seen from inside it.
uid=$(podman exec "$container" id -u 2>&1)
if [[ $uid == 10001 ]] &&
  podman exec "$container" sh -c 'touch /tmp/probe && ! touch /srv/ganserve/probe 2>/dev/null && ! touch /opt/ganserve/probe 2>/dev/null'; then
  pass "runs as uid 10001, root filesystem read-only, /tmp writable"
else
  fail "user / read-only root: uid $uid, or / is writable, or /tmp is not"
fi

if out=$(timeout 120 "$py" "$here/check_server.py" sample --target "$target" 2>&1); then
  pass "Sample: $out"
else
  fail "Sample: $out"
fi

if out=$(timeout 30 "$py" "$here/check_server.py" metrics --url "http://127.0.0.1:$metrics_port/metrics" 2>&1); then
  pass "/metrics on :$metrics_port: $out"
else
  fail "/metrics: $out"
fi

if out=$(timeout 60 "$py" "$here/check_server.py" http --url "http://127.0.0.1:$http_port" 2>&1); then
  pass "HTTP on :$http_port: $out"
else
  fail "HTTP: $out"
fi

# ---------------------------------------------------------------------- stop
# podman stop sends the image's STOPSIGNAL (SIGTERM), SIGKILL after stop_timeout.
t=$(now)
timeout $((stop_timeout + 30)) podman stop --time "$stop_timeout" "$container" >/dev/null ||
  fail "stop: podman stop did not return"
timings+=("SIGTERM to exit: $(elapsed "$t") s")
code=$(podman container inspect --format '{{.State.ExitCode}}' "$container")
podman logs "$container" >"$scratch/container.log" 2>&1
drain=$(grep -E 'SIGTERM: draining' "$scratch/container.log" | head -n 1)
if [[ $code == 0 && -n $drain ]] && grep -qE '\bstopped$' "$scratch/container.log"; then
  pass "SIGTERM: exit code 0, log: ${drain#*: } ... stopped"
else
  tail -n 20 "$scratch/container.log" >&2
  fail "SIGTERM: exit code $code, drain logged: ${drain:-no}"
fi

pass "image size $image_tag: $(human "$size") (base $base_tag: $(human "$base_size"))"
podman images --filter reference="$image_tag" --filter reference="$base_tag" \
  --format '  {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}'
timings+=("total: $(elapsed "$t_all") s")
summary
((${#failed[@]} == 0))
