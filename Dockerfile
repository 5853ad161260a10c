# syntax=docker/dockerfile:1
# amqpd container image. The base is a build argument so the image can be built from a
# locally made Python base where no registry is reachable (see `make image-test`).
ARG PYTHON_BASE=python:3.11-slim

FROM ${PYTHON_BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY amqpd ./amqpd
COPY exchanges ./exchanges
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels . \
 && python3 -m pip wheel --wheel-dir /wheels pamqp anyio pyyaml

FROM ${PYTHON_BASE}
RUN useradd --system --home-dir /var/lib/amqpd --shell /usr/sbin/nologin amqpd \
 && mkdir -p /var/lib/amqpd /etc/amqpd && chown amqpd /var/lib/amqpd
COPY --from=build /wheels /wheels
RUN python3 -m pip install --no-cache-dir --no-index --find-links /wheels amqpd \
 && rm -rf /wheels
COPY config/ /etc/amqpd/
USER amqpd
VOLUME ["/var/lib/amqpd"]
EXPOSE 5672 5671
STOPSIGNAL SIGTERM
ENTRYPOINT ["amqpd", "--host", "0.0.0.0", "--data-dir", "/var/lib/amqpd"]
