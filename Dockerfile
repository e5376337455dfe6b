# avatarstream server with the embedded CPU "lite" engine (no torch, no downloaded weights).
#   docker build -t avatarstream .
#   docker run --rm --network host -e AVATARSTREAM_API_KEY=change-me avatarstream   # API clients send the key
#   docker run --rm --network host avatarstream avatar serve --host 0.0.0.0 --insecure  # a local demo, no key
# WebRTC media uses UDP on ephemeral ports: --network host is the simple way to reach them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# OpenCV / dlib runtime libraries (PyAV wheels bundle FFmpeg, libvpx and libopus).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 libgl1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The whole repository minus .dockerignore: pyproject.toml's package-dir alone says which folders install
# (tests/test_docker_image.py builds the wheel from exactly these files and serves from the install).
COPY . .
RUN pip install . && useradd --create-home avatar
USER avatar

EXPOSE 8080
CMD ["avatar", "serve", "--host", "0.0.0.0", "--port", "8080"]
