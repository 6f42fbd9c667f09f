# The tetra worker on a CUDA/PyTorch base (GPU).
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#                --build-arg PYTHON_VERSION=3.11 -t tetra-worker:gpu .
# PYTHON_VERSION must match the notebook's minor version (functions travel as bytecode) and
# should be the base's own Python, so the base's torch is importable; for another version uv
# downloads a standalone Python and torch must then come as a request dependency.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}
ARG PYTHON_VERSION=3.11

# The worker's environment is a venv at /opt/worker made by uv from the base's Python, seeing
# the base's packages (torch, CUDA libraries); requests' dependencies are installed into it, so
# a request pinning another torch gets it without touching the base.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir uv \
 && python3 -m uv venv --python "${PYTHON_VERSION}" --system-site-packages /opt/worker \
 && python3 -m uv pip install --no-cache --python /opt/worker/bin/python \
        "runpod==1.12.0" "cloudpickle>=3.0" "pydantic>=2.6" "packaging>=23" "uv>=0.4"

COPY worker /opt/tetra/worker

# apt-get for requests' system_dependencies is allowed: this is a container and runs as root.
ENV PATH=/opt/worker/bin:${PATH} \
    VIRTUAL_ENV=/opt/worker \
    PYTHONPATH=/opt/tetra \
    PYTHONUNBUFFERED=1 \
    TETRA_ALLOW_APT=1
WORKDIR /opt/tetra
CMD ["/opt/worker/bin/python", "-m", "worker"]
