# The compose example's producer and worker: two small pika scripts.
ARG PYTHON_BASE=python:3.11-slim
FROM ${PYTHON_BASE}
RUN python3 -m venv /opt/clients && /opt/clients/bin/pip install --no-cache-dir 'pika>=1.3' \
 && useradd --system --no-create-home --shell /usr/sbin/nologin client
COPY producer.py worker.py /opt/clients/
USER client
ENV PATH=/opt/clients/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /opt/clients
CMD ["python3", "worker.py"]
