# Shared by the .ci/image-* scripts (sourced, not run): which engine builds and runs the image, and the
# fallback base's name.
#
# Docker where its daemon answers; else buildah (build, run, push) as root with chroot isolation and the vfs
# storage driver: no daemon, no OCI runtime and no overlay mounts, so it works inside an unprivileged CI
# container too. vfs stores every layer as a whole copy, so the build adds one layer only (--layers=false).
# STORAGE_DRIVER=overlay is faster where overlay mounts work; images built with one driver are not seen
# by the other.
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"

# buildah 1.28 (Debian bookworm) ignores the STORAGE_DRIVER variable; the flag it does read.
buildah() {
    command buildah --storage-driver "$STORAGE_DRIVER" "$@"
}

# The official base (an exact Python patch release on bookworm) and the Debian-built stand-in for it.
OFFICIAL_BASE="${PYTHON_IMAGE:-python:3.11.14-slim-bookworm}"
FALLBACK_BASE="localhost/kfp-ps-classifier-base:bookworm-python3.11"

# install_package PROGRAM PACKAGE: install PACKAGE from Debian's packages when PROGRAM is missing and this is a
# Debian machine where we are root (a fresh machine keeps nothing); otherwise leave it to the caller's error.
install_package() {
    type -P "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && type -P apt-get >/dev/null; then
        echo "installing $2 (Debian package) for $1" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >/dev/null
    fi
}

image_engine() {
    if [ -z "${IMAGE_ENGINE:-}" ] && ! { type -P docker >/dev/null && docker info >/dev/null 2>&1; }; then
        install_package buildah buildah
    fi
    if [ -n "${IMAGE_ENGINE:-}" ]; then
        echo "$IMAGE_ENGINE"
    elif type -P docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    elif type -P buildah >/dev/null; then  # -P: the program, not the wrapper function above
        echo buildah
    else
        echo "error: expected a working docker (daemon running) or buildah on PATH, found neither" >&2
        return 1
    fi
}

# image_exists ENGINE IMAGE: whether IMAGE is in the engine's local storage.
image_exists() {
    if [ "$1" = docker ]; then docker image inspect "$2" >/dev/null 2>&1; else buildah inspect --type image "$2" >/dev/null 2>&1; fi
}

# image_size ENGINE IMAGE: the image's size as the engine reports it.
image_size() {
    if [ "$1" = docker ]; then
        docker image inspect --format '{{.Size}}' "$2" | numfmt --to=si --suffix=B
    else
        buildah images --format '{{.Size}}' "$2"
    fi
}
