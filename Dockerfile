# The flows' image: `docker compose --profile flows up` builds it.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trade2026 trade2026
COPY schemas schemas
COPY operators operators
COPY flows flows
COPY sources sources
COPY sinks sinks
COPY benchmarks benchmarks
COPY data data
RUN pip install --no-cache-dir .
EXPOSE 9464
ENTRYPOINT []
CMD ["trade2026", "--help"]
