# The omnidistill image: the project installed at the locked versions, ready for `prefect worker start`
# (docker-compose.yml's worker) or `prefect server start` (its server).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 OMNIDISTILL_HOME=/opt/omnidistill
WORKDIR /opt/omnidistill
COPY pyproject.toml README.md constraints.txt ./
COPY dd_core ./dd_core
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY configs ./configs
# The versions the tests passed with (constraints.txt); docker-compose.yml's server runs this image too.
RUN pip install -c constraints.txt .
CMD ["prefect", "worker", "start", "--pool", "cpu"]
