"""newsmon: monitor news feeds into a topic-partitioned PostgreSQL warehouse.

The package never imports Airflow: DAGs in ``dags/`` call its functions and pass
connections and run ids in as arguments.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
