"""SGLang's disaggregation environment variables, under both prefixes."""

import pytest

from pdcore.envs import DisaggregationEnv
from pdcore.errors import ConfigError


def test_documented_defaults():
    env = DisaggregationEnv.from_env({})
    assert env.queue_size == 4
    assert env.bootstrap_timeout == 300.0
    assert env.heartbeat_interval == 5.0
    assert env.heartbeat_max_failure == 2
    assert env.waiting_timeout == 300.0
    assert 4 <= env.thread_pool_size <= 12


def test_sglang_names_are_honoured():
    env = DisaggregationEnv.from_env(
        {"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "600", "SGLANG_DISAGGREGATION_QUEUE_SIZE": "1"}
    )
    assert env.bootstrap_timeout == 600.0 and env.queue_size == 1


def test_pdcore_name_wins_over_sglang_name():
    env = DisaggregationEnv.from_env(
        {
            "SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "600",
            "PDCORE_DISAGGREGATION_WAITING_TIMEOUT": "30",
        }
    )
    assert env.waiting_timeout == 30.0


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SGLANG_DISAGGREGATION_QUEUE_SIZE", "four", "expected an integer"),
        ("PDCORE_DISAGGREGATION_HEARTBEAT_INTERVAL", "0", "must be >= 0.1"),
        ("SGLANG_DISAGGREGATION_THREAD_POOL_SIZE", "0", "must be >= 1"),
    ],
)
def test_bad_values_name_the_variable(var, value, message):
    with pytest.raises(ConfigError) as err:
        DisaggregationEnv.from_env({var: value})
    assert err.value.flag == var and message in str(err.value)
