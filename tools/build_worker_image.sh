#!/usr/bin/env bash
# Build Dockerfile-cpu with buildah, without a Docker engine or an image registry, and run one
# request inside the image through the worker's own `--test_input` mode.
#
# The base image is made here with debootstrap (Debian bookworm + python3), standing in for
# python:3.11-slim, so only Debian and PyPI have to be reachable. Where those are reached
# through a TLS-intercepting proxy, the host's CA bundle is baked into the base and named by
# SSL_CERT_FILE / PIP_CERT there, which pip and uv inside the build honour.
#
#   tools/build_worker_image.sh            # base (once), image, test request
#   KEEP_BASE=0 tools/build_worker_image.sh   # rebuild the base too
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${TETRA_IMAGE_WORK:-/var/tmp/tetra-image}
SUITE=bookworm
PYTHON_VERSION=3.11 # bookworm's python3
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/tetra-base-debian-$SUITE
IMAGE=localhost/tetra-worker-cpu
CA=/etc/ssl/certs/ca-certificates.crt
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} # works inside containers, where overlay may not
export BUILDAH_ISOLATION=chroot

log() { printf '\n== %s\n' "$*" >&2; }

need() {
	command -v "$1" >/dev/null 2>&1 && return
	log "installing $2"
	apt-get install -y -q "$2" >/dev/null
}

make_base() {
	if [[ ${KEEP_BASE:-1} == 1 ]] && buildah inspect --type image "$BASE" >/dev/null 2>&1; then
		log "base $BASE already built"
		return
	fi
	local rootfs=$WORK/rootfs ctr
	log "debootstrap $SUITE into $rootfs"
	rm -rf "$rootfs" && mkdir -p "$WORK"
	debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
		"$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log"
	cp "$CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
	tar -C "$rootfs" -cf "$WORK/rootfs.tar" .
	log "importing the root filesystem as $BASE"
	ctr=$(buildah from scratch)
	buildah add "$ctr" "$WORK/rootfs.tar" / >/dev/null
	buildah config \
		--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--env SSL_CERT_FILE="$CA" --env PIP_CERT="$CA" --env REQUESTS_CA_BUNDLE="$CA" \
		--cmd /bin/bash "$ctr"
	buildah commit --quiet "$ctr" "$BASE" >/dev/null
	buildah rm "$ctr" >/dev/null
	rm -rf "$rootfs" "$WORK/rootfs.tar"
}

build_image() {
	log "buildah build -f Dockerfile-cpu -> $IMAGE"
	buildah build --isolation chroot --layers=false -f "$ROOT/Dockerfile-cpu" \
		--build-arg BASE_IMAGE="$BASE" --build-arg PYTHON_VERSION="$PYTHON_VERSION" \
		-t "$IMAGE" "$ROOT"
}

# One request that needs a system package (apt-get, allowed in the image) and a Python package
# from PyPI (uv), and prints from a subprocess: the image's whole install-and-run path.
REQUEST=$(
	cat <<'JSON'
{"input": {
  "function_name": "f",
  "function_code": "def f():\n    import subprocess\n    import pyjokes\n    subprocess.run(['jq', '--version'], check=True)\n    return pyjokes.get_joke()\n",
  "dependencies": ["pyjokes==0.8.3"],
  "system_dependencies": ["jq"]
}}
JSON
)

run_request() {
	local ctr out
	log "python -m worker --test_input ... inside $IMAGE"
	ctr=$(buildah from "$IMAGE")
	trap 'buildah rm "$ctr" >/dev/null' RETURN
	out=$(buildah run --isolation chroot "$ctr" -- /opt/worker/bin/python -m worker \
		--test_input "$REQUEST" 2>&1) || {
		printf '%s\n' "$out" >&2
		return 1
	}
	printf '%s\n' "$out" | grep -E '^(INFO|ERROR) ' >&2
	grep -q "'success': True" <<<"$out" && grep -q 'jq-1\.' <<<"$out"
}

need buildah buildah
need debootstrap debootstrap
make_base
build_image
if run_request; then
	log "PASSED: the image ran the request"
else
	log "FAILED: the image did not run the request"
	exit 1
fi
