# amqpd container image.
#
#   docker build -t amqpd .
#   docker run -d -p 5672:5672 -v amqpd-data:/var/lib/amqpd \
#       -e AMQPD_DEFAULT_USER=app -e AMQPD_DEFAULT_PASS=secret amqpd
#
# The base is a build argument so the image can also be built from a locally made Python base
# where no registry is reachable (`make image-test` builds one from Debian packages). Any
# Debian-like image with python3 >= 3.11 and its venv module, useradd and groupadd works.
ARG PYTHON_BASE=python:3.11-slim

# ---- build: the wheels (amqpd and its dependencies), installed offline into /opt/amqpd ------
FROM ${PYTHON_BASE} AS build
# The hot path compiled with mypyc (setup.py): auto = compiled when gcc and Python.h can be
# had, else a pure-Python wheel; 1 = compiled or fail; 0 = pure. Only this stage gets gcc.
ARG AMQPD_MYPYC=auto
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN if [ "${AMQPD_MYPYC}" != 0 ]; then \
        include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
        packages="gcc libc6-dev"; [ -f "$include/Python.h" ] || packages="$packages python3-dev"; \
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
              --no-install-recommends $packages >/dev/null && rm -rf /var/lib/apt/lists/*; } \
        || [ "${AMQPD_MYPYC}" = auto ]; \
    fi
RUN python3 -m venv /opt/build
WORKDIR /src
# Dependencies first, read from pyproject.toml: this layer is reused while only the source
# changes. The build backend (setuptools) is fetched here too, so the amqpd wheel below is
# built offline.
COPY pyproject.toml ./
RUN /opt/build/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(p["project"]["dependencies"] + p["project"]["optional-dependencies"]["fast"]))' \
        > requirements.txt \
 && /opt/build/bin/python -c 'import tomllib; \
p = tomllib.load(open("pyproject.toml", "rb")); dev = p["project"]["optional-dependencies"]["dev"]; \
print("\n".join(p["build-system"]["requires"] + [d for d in dev if d.startswith(("mypy", "types-"))]))' \
        > build-requirements.txt \
 && /opt/build/bin/pip wheel --wheel-dir /wheels -r requirements.txt \
 && /opt/build/bin/pip wheel --wheel-dir /build-wheels -r build-requirements.txt \
 && /opt/build/bin/pip install --no-index --find-links /wheels --find-links /build-wheels \
        -r requirements.txt -r build-requirements.txt
COPY README.md setup.py ./
COPY amqpd ./amqpd
COPY exchanges ./exchanges
# Built offline in the build venv: setuptools, wheel, mypy (mypyc) and the runtime
# dependencies, which mypyc type-checks against exactly as `make typecheck` does.
RUN AMQPD_MYPYC=${AMQPD_MYPYC} /opt/build/bin/pip wheel --no-deps --no-index \
        --no-build-isolation --wheel-dir /wheels .
# The wheel and its dependencies, installed offline into the venv the runtime stage copies
# (copying /wheels instead would leave them in a layer; a RUN --mount=from=build is not part
# of buildah's layer cache key, so a cached image could keep an old wheel).
RUN python3 -m venv /opt/amqpd \
 && /opt/amqpd/bin/pip install --no-index --find-links /wheels 'amqpd[fast]' \
 && /opt/amqpd/bin/pip uninstall --yes --quiet pip setuptools \
 && /opt/amqpd/bin/amqpd --help > /dev/null

# ---- runtime: the installed wheel (a venv from the same base), no source tree, no pip -------
FROM ${PYTHON_BASE}
ARG AMQPD_UID=999
RUN groupadd --system --gid "${AMQPD_UID}" amqpd \
 && useradd --system --uid "${AMQPD_UID}" --gid amqpd --home-dir /var/lib/amqpd \
        --no-create-home --shell /usr/sbin/nologin amqpd \
 && mkdir -p /var/lib/amqpd /etc/amqpd \
 && chown amqpd:amqpd /var/lib/amqpd && chmod 0750 /var/lib/amqpd
COPY --from=build /opt/amqpd /opt/amqpd
COPY config/ /etc/amqpd/

# Settings by environment (command line > environment > /etc/amqpd/amqpd.yaml > defaults), so
# the HEALTHCHECK's `amqpd ping` finds the same listener as the broker. Any AMQPD_* variable
# of config/amqpd.yaml can be set with `-e`, e.g. AMQPD_PORT, AMQPD_LOG_FORMAT=json.
# AMQPD_DEFAULT_USER / AMQPD_DEFAULT_PASS (default guest/guest) create the default user at
# start, like the official RabbitMQ image. guest may only connect from loopback, so a client
# from outside the container (another container, the host via -p) needs them set.
ENV PATH=/opt/amqpd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AMQPD_CONFIG=/etc/amqpd/amqpd.yaml \
    AMQPD_HOST=0.0.0.0 \
    AMQPD_DATA_DIR=/var/lib/amqpd
USER ${AMQPD_UID}:${AMQPD_UID}
WORKDIR /var/lib/amqpd
VOLUME ["/var/lib/amqpd"]
# 5672 amqp; 5671 amqps once TLS is configured (AMQPD_TLS_PORT=5671, AMQPD_TLS_CERTFILE, ...).
EXPOSE 5672 5671
# SIGTERM: amqpd stops accepting, closes every connection with 320 CONNECTION_FORCED, waits up
# to limits.close_timeout (3 s) for close-ok, flushes the store and exits 0. Docker's default
# 10 s stop timeout covers that.
STOPSIGNAL SIGTERM
# A real AMQP handshake (start/tune/open/close) as the default user against the local
# listener; exit 0 healthy, 1 not.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["amqpd", "ping", "--timeout", "5"]
ENTRYPOINT ["amqpd"]
CMD ["run"]
