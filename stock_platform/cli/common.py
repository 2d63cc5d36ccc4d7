"""What every command shares: the `--home` option, the settings built from the environment and the options,
the resources built from those settings, the home's Dagster instance, and the error a bad option raises."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path

from stock_platform.settings import Settings, SettingsError, load_settings, parse_tickers

# The run config of a command's in-process runs: Dagster's console log shows errors only (the command prints its own).
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class CommandError(Exception):
    """A command could not do its work (a failed run, a missing table version): `main` prints it, exit status 1."""


# The parent parser of every command's shared options.
SHARED = argparse.ArgumentParser(add_help=False)
SHARED.add_argument("--home", help="STOCK_PLATFORM_HOME (default ./.stock_platform)")


def settings_from(args: argparse.Namespace, **variables: str | None) -> Settings:
    """The environment's settings with the command's options over them: `--home` and the given
    STOCK_PLATFORM_* values (None: not given). Nothing is written to the process's environment."""
    env: dict[str, str] = dict(os.environ)
    if args.home:
        env["STOCK_PLATFORM_HOME"] = str(Path(args.home).expanduser().resolve())
        env.pop("DAGSTER_HOME", None)  # the home's own instance, not one the shell pointed at
    env |= {k: v for k, v in variables.items() if v is not None}
    return load_settings(env)


def settings_environment(settings: Settings) -> Mapping[str, str]:
    """The variables that give a child process (the printed UI command) these settings."""
    env = {"STOCK_PLATFORM_HOME": str(settings.home), "DAGSTER_HOME": str(settings.dagster_home),
           "STOCK_PLATFORM_SOURCE": settings.source, "STOCK_PLATFORM_TICKERS": ",".join(settings.tickers),
           "STOCK_PLATFORM_START": settings.start.isoformat()}
    if settings.files_dir:
        env["STOCK_PLATFORM_FILES_DIR"] = str(settings.files_dir)
    return env


def resources(settings: Settings) -> dict:
    from stock_platform.resources import build_resources

    return build_resources(settings)


def open_instance(settings: Settings):
    """The home's Dagster instance (created on first use: SQLite storage in its folder, no telemetry).

    Dagster reads its home and feature flags only from the environment: these two variables are set for
    Dagster itself, not to pass the platform's settings (those go down as a `Settings` object)."""
    import dagster as dg

    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    instance_yaml = settings.dagster_home / "dagster.yaml"
    if not instance_yaml.exists():
        instance_yaml.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    # One "planned" event per asset for a single-run backfill instead of one per partition.
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    return dg.DagsterInstance.get()


def step_errors(result) -> str:
    """The step failures' messages of an in-process run's result."""
    messages = [e.event_specific_data.error.message.strip() for e in result.all_events
                if e.event_type_value == "STEP_FAILURE" and e.event_specific_data.error]
    return "\n".join(messages) or "run failed (see the run in the Dagster UI)"


def tickers_option(value: str | None) -> list[str] | None:
    return list(parse_tickers(value, where="--tickers")) if value else None


def date_option(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"{option} {value!r}: not a date (expected YYYY-MM-DD)") from None
