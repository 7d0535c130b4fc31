# newsmon's Airflow image: the official Airflow image plus newsmon's pinned dependencies and newsmon itself.
# Built by `docker compose build` (docker-compose.yml passes AIRFLOW_BASE_IMAGE); by hand:
#     docker build -t newsmon-airflow:3.3.2-python3.11 .
# Python 3.11 because pyproject.toml requires it and constraints.txt was frozen on it. For a smaller image
# with fewer pre-installed providers, build with --build-arg AIRFLOW_BASE_IMAGE=apache/airflow:slim-3.3.2-python3.11
# (requirements.txt already brings the Celery provider and psycopg2).
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# Dependencies first: this slow layer is rebuilt only when the pins change. Naming apache-airflow at the
# image's own version (AIRFLOW_VERSION is set by the base image) makes pip fail rather than swap Airflow.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/newsmon-build/
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        -r /opt/airflow/newsmon-build/requirements.txt \
        -c /opt/airflow/newsmon-build/constraints.txt

# newsmon finds its migrations and config relative to the package (include/newsmon -> /opt/airflow), which is
# where docker-compose.yml mounts include/ and sql/ too, so mounted code replaces this copy without a rebuild.
# (plugins/ is not copied: it is empty, and git keeps no empty folders; compose mounts it.)
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 sql/ /opt/airflow/sql/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow

# Also importable when a container runs as root (airflow-init), where the user site's .pth is not read.
ENV PYTHONPATH=/opt/airflow/include
