# The pipeline image: every component (Vertex AI Pipelines tasks, the Vertex AI training job and
# the Dataflow workers) runs this same image, so code and pins are identical everywhere.
#   docker build -t REGION-docker.pkg.dev/PROJECT/segpipe/segpipe:TAG .
FROM python:3.10-slim

# Dataflow (runner v2) starts workers through Beam's boot binary; take it from the Beam SDK image
# of exactly the pinned Beam version.
COPY --from=apache/beam_python3.10_sdk:2.61.0 /opt/apache/beam /opt/apache/beam

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 TF_USE_LEGACY_KERAS=1
WORKDIR /segpipe

# Dependencies first (cached layer): the same lock file that local set-up and CI install from.
COPY requirements.lock ./
RUN pip install "uv==0.13.9" && uv pip install --system -r requirements.lock

# The project itself; schemas stay at /segpipe/schemas (config `vertex.schema_dir`).
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY components ./components
COPY trainer_module ./trainer_module
COPY schemas ./schemas
RUN uv pip install --system --no-deps . && python -c "import pipelines.cli, components, trainer_module"

ENTRYPOINT ["/opt/apache/beam/boot"]
