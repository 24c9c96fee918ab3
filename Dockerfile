# One image for every Bastion service; the command picks the service.
#   docker build -t bastion . && docker run bastion proxy serve
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bastion ./bastion
COPY proxy ./proxy
COPY policy ./policy
COPY graph ./graph
COPY verifier ./verifier
COPY eval ./eval
COPY dashboard ./dashboard
# bastion/<service> are symlinks for tools; the wheel is built from the package-dir mapping.
RUN find bastion -maxdepth 1 -type l -delete && pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /var/lib/bastion bastion \
    && mkdir -p /var/lib/bastion /etc/bastion && chown bastion /var/lib/bastion
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples /opt/bastion/examples
ENV BASTION_HOME=/var/lib/bastion \
    BASTION_CONFIG=/etc/bastion/bastion.yaml \
    PYTHONUNBUFFERED=1
USER bastion
WORKDIR /var/lib/bastion
ENTRYPOINT ["bastion"]
CMD ["--help"]
