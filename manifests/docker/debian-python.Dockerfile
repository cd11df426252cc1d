# The fallback base image, for machines that cannot pull python:3.11.*-slim-bookworm (no Docker Hub):
# the same Debian release (bookworm) with its own Python 3.11, built from Debian packages only.
# `.ci/image-base` debootstraps the root filesystem into build/image-base/rootfs.tar and builds this file
# with that folder as the context; `make image` uses the result only where the official image cannot be pulled.
#
# Like the official image, `python`, `python3` and `pip` on PATH are the interpreter the project installs into:
# here a venv over Debian's python3, because Debian marks its system interpreter externally managed (PEP 668).
FROM scratch
ADD rootfs.tar /
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
RUN python3 -m venv /opt/python \
    && rm -rf /root/.cache
CMD ["python3"]
