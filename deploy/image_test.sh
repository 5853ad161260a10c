#!/usr/bin/env bash
# Build the amqpd image from the project's Dockerfile and run it: `make image-test`.
#
# No container engine runs on the development machines and no image registry is reachable, so:
#   1. a local Python base image is made from Debian packages (debootstrap of a minimal
#      bookworm with python3 + python3-venv, committed with `buildah from scratch`) and kept
#      in buildah's storage: later runs reuse it (AMQPD_REBUILD_BASE=1 makes it again);
#   2. the Dockerfile is built on it: buildah bud --isolation chroot --layers
#      --build-arg PYTHON_BASE=<that base> (dependency wheels are cached as a layer);
#   3. deploy/image_check.py runs the image's own ENTRYPOINT/CMD with `buildah run` (host
#      network), talks to it with pika, runs the HEALTHCHECK command in the container, stops it
#      with STOPSIGNAL and checks the graceful drain (320 to clients, exit 0).
# Needs root; installs buildah and debootstrap with apt-get when missing.
#
# Environment: PYTHON (with pika; default .venv/bin/python), AMQPD_IMAGE (default
# localhost/amqpd:test), AMQPD_BASE_IMAGE (default localhost/amqpd-base:bookworm),
# AMQPD_REBUILD_BASE=1, DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${AMQPD_IMAGE:-localhost/amqpd:test}
CLIENTS_IMAGE=localhost/amqpd-example-clients:test
BASE_IMAGE=${AMQPD_BASE_IMAGE:-localhost/amqpd-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
START=$SECONDS

say() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - START))"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/amqpd-image-test.XXXXXX")
CONTAINERS=()
cleanup() {
    local status=$?
    set +e
    for ctr in "${CONTAINERS[@]}"; do
        buildah umount "$ctr" >/dev/null 2>&1
        buildah rm "$ctr" >/dev/null 2>&1
    done
    # debootstrap mounts /proc and /sys in the new root; an interrupted run may leave them.
    findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | xargs -r umount -l
    rm -rf "$WORK"
    if [[ $status -ne 0 ]]; then echo "image test FAILED (exit $status)" >&2; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $(id -u) -ne 0 ]]; then
    echo "deploy/image_test.sh needs root (buildah with chroot isolation, debootstrap)" >&2
    exit 1
fi
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
"$PYTHON" -c 'import pika' 2>/dev/null || {
    echo "$PYTHON has no pika: run make (or set PYTHON)" >&2
    exit 1
}

# ---- 1. the local base image (the stand-in for python:3.11-slim) ---------------------------
if [[ ${AMQPD_REBUILD_BASE:-0} == 1 ]] || ! buildah inspect --type image "$BASE_IMAGE" \
        >/dev/null 2>&1; then
    say "making $BASE_IMAGE with debootstrap ($SUITE minbase + python3, python3-venv)"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        exit 1
    }
    # The machine's extra CAs (a TLS-intercepting egress proxy), so pip in the build stage
    # reaches PyPI as it does on the host. Only this local test base gets them.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    ctr=$(buildah from scratch)
    CONTAINERS+=("$ctr")
    cp -a "$rootfs/." "$(buildah mount "$ctr")/"
    buildah umount "$ctr" >/dev/null
    buildah config --env LANG=C.UTF-8 --cmd '["python3"]' \
        --label org.opencontainers.image.description="amqpd image-test base: Debian $SUITE \
minbase with python3 (made by deploy/image_test.sh)" "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
    CONTAINERS=()
    rm -rf "$rootfs"
else
    say "reusing $BASE_IMAGE (AMQPD_REBUILD_BASE=1 makes it again)"
fi

# ---- 2. the project's Dockerfile ---------------------------------------------------------
say "building $IMAGE from Dockerfile on $BASE_IMAGE"
buildah bud --isolation chroot --layers --force-rm --format docker \
    --build-arg PYTHON_BASE="$BASE_IMAGE" --tag "$IMAGE" . > "$WORK/build.log" 2>&1 || {
    cat "$WORK/build.log" >&2
    exit 1
}
grep -E '^(\[[0-9]/[0-9]\] )?STEP|Using cache|Successfully installed' "$WORK/build.log" \
    | sed 's/^/  | /' | cut -c1-120

say "building the compose example's clients image (deploy/clients.Dockerfile)"
buildah bud --isolation chroot --layers --force-rm --format docker --build-arg PYTHON_BASE="$BASE_IMAGE" \
    --file deploy/clients.Dockerfile --tag "$CLIENTS_IMAGE" deploy > "$WORK/clients.log" 2>&1 || {
    cat "$WORK/clients.log" >&2
    exit 1
}

# ---- 3. run it ---------------------------------------------------------------------------
say "running $IMAGE"
ctr=$(buildah from --name "amqpd-image-test-$$" "$IMAGE")
CONTAINERS+=("$ctr")
data=$WORK/volume   # stands in for the named volume mounted on /var/lib/amqpd
mkdir -p "$data"
user=$(buildah inspect --type image --format '{{.Docker.Config.User}}' "$IMAGE")
chown "$user" "$data"
clients=$(buildah from --name "amqpd-image-test-clients-$$" "$CLIENTS_IMAGE")
CONTAINERS+=("$clients")
"$PYTHON" deploy/image_check.py "$IMAGE" "$ctr" "$data" "$clients"

say "image test passed"
