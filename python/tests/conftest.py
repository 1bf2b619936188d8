"""This suite uses only what `pip install warren-broker` gives a user: the `warren*` fixtures
arrive through the package's pytest11 entry point, not from here. Celery's own pytest plugin
(celery_app, celery_worker) is pointed at warren the way the README shows."""

import pytest

pytest_plugins = ("celery.contrib.pytest",)


@pytest.fixture(scope="session")
def celery_config(warren_celery_config):
    # acks_late and one message at a time: a task's message stays unacked while it runs, as
    # in the workers that meet the heartbeat bug.
    return {**warren_celery_config, "task_acks_late": True, "worker_prefetch_multiplier": 1}
