# The node image used by compose.yaml: the package and its console scripts, nothing else.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY thatdam_bus ./thatdam_bus
COPY handlers ./handlers
RUN pip install --no-cache-dir .
VOLUME ["/var/lib/thatdam"]
ENTRYPOINT ["thatdam"]
CMD ["up"]
