-- Run once by the postgres image on an empty data directory.
CREATE DATABASE dagster;
CREATE DATABASE warehouse;
CREATE DATABASE mlflow;
CREATE DATABASE marquez;
