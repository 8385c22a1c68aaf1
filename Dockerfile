# An omnidistill worker image: the project installed, ready for `prefect worker start`.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 OMNIDISTILL_HOME=/opt/omnidistill
WORKDIR /opt/omnidistill
COPY pyproject.toml README.md ./
COPY dd_core ./dd_core
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY configs ./configs
RUN pip install .
CMD ["prefect", "worker", "start", "--pool", "cpu"]
