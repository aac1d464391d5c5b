"""Config: flags, environment fallbacks, defaults and validation."""
from __future__ import annotations

import argparse

import pytest

from scheduler import config as cfg
from scheduler.config import Config


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return cfg.from_args(parser.parse_args(argv), environ or {})


def test_defaults_without_flags_or_environment():
    c = parse([])
    assert c == Config()
    assert (c.host, c.port, c.redis_url, c.redis_cluster) == ("127.0.0.1", 4001, None, False)
    assert (c.task_hub, c.partitions, c.key_prefix) == ("default", 16, "dt")
    assert c.max_payload_bytes == 4 * 1024 * 1024 - 64 * 1024  # headroom below gRPC clients' 4 MiB default
    assert c.metrics_port is None


def test_flags_set_every_option():
    c = parse(["--host", "0.0.0.0", "--port", "5000", "--redis-url", "redis://h:1/2", "--redis-cluster",
               "--task-hub", "hub.a", "--partitions", "4", "--key-prefix", "pre_x", "--max-payload-bytes", "10",
               "--log-level", "debug", "--metrics-port", "9100", "--allow-unauthenticated"])
    assert c == Config(host="0.0.0.0", port=5000, redis_url="redis://h:1/2", redis_cluster=True, task_hub="hub.a",
                       partitions=4, key_prefix="pre_x", max_payload_bytes=10, log_level="DEBUG", metrics_port=9100,
                       allow_unauthenticated=True)


ENV = {"DT_HOST": "10.0.0.1", "DT_PORT": "4100", "DT_REDIS_URL": "redis://env:6379/0", "DT_REDIS_CLUSTER": "1",
       "DT_TASK_HUB": "envhub", "DT_PARTITIONS": "8", "DT_KEY_PREFIX": "envp", "DT_MAX_PAYLOAD_BYTES": "123",
       "DT_LOG_LEVEL": "warning", "DT_METRICS_PORT": "9200", "DT_ALLOW_UNAUTHENTICATED": "1"}


def test_environment_is_the_fallback_of_each_flag():
    c = parse([], ENV)
    assert c == Config(host="10.0.0.1", port=4100, redis_url="redis://env:6379/0", redis_cluster=True,
                       task_hub="envhub", partitions=8, key_prefix="envp", max_payload_bytes=123,
                       log_level="WARNING", metrics_port=9200, allow_unauthenticated=True)


def test_flags_win_over_environment():
    c = parse(["--port", "0", "--task-hub", "flaghub", "--partitions", "2"], ENV)
    assert (c.port, c.task_hub, c.partitions) == (0, "flaghub", 2)
    assert c.key_prefix == "envp"  # not given as a flag: still from the environment


def test_empty_environment_variable_counts_as_unset():
    assert parse([], {"DT_PORT": "", "DT_TASK_HUB": ""}) == Config()


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("yes", True),
                                            ("0", False), ("no", False), ("", False)])
def test_redis_cluster_environment_values(value, expected):
    assert parse([], {"DT_REDIS_CLUSTER": value}).redis_cluster is expected


def test_malformed_number_in_environment_is_a_value_error():
    with pytest.raises(ValueError):
        parse([], {"DT_PORT": "not-a-port"})


@pytest.mark.parametrize("kwargs,fragment", [
    ({"task_hub": ""}, "task hub name"),
    ({"task_hub": "a b"}, "task hub name"),
    ({"task_hub": "hub*"}, "task hub name"),
    ({"task_hub": "hub{x}"}, "task hub name"),
    ({"task_hub": "hub:x"}, "task hub name"),
    ({"task_hub": "h" * 65}, "task hub name"),
    ({"key_prefix": "dt:x"}, "key prefix"),
    ({"key_prefix": ""}, "key prefix"),
    ({"partitions": 0}, "partitions"),
    ({"partitions": 1025}, "partitions"),
    ({"port": -1}, "port"),
    ({"port": 65536}, "port"),
    ({"max_payload_bytes": 0}, "payload"),
    ({"processes": 0, "redis_url": "redis://h:1/0"}, "--processes"),
    ({"processes": 65, "redis_url": "redis://h:1/0"}, "--processes"),
    ({"processes": 2}, "--processes \\(DT_PROCESSES\\) 2 needs --redis-url"),
])
def test_invalid_values_are_rejected_with_a_message(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Config(**kwargs)


def test_invalid_flag_value_is_rejected_by_from_args():
    with pytest.raises(ValueError, match="partitions"):
        parse(["--partitions", "0"])
    with pytest.raises(ValueError, match="task hub"):
        parse([], {"DT_TASK_HUB": "no spaces"})


@pytest.mark.parametrize("kwargs", [{"task_hub": "h" * 64}, {"partitions": 1}, {"partitions": 1024},
                                    {"port": 0}, {"port": 65535}, {"max_payload_bytes": 1},
                                    {"task_hub": "A-z_0.9"}])
def test_boundary_values_are_accepted(kwargs):
    Config(**kwargs)


def test_unknown_log_level_is_rejected():
    # The CLI hands log_level to logging.basicConfig, which raises a bare ValueError
    # (a traceback, not a usage error) for an unknown level.
    with pytest.raises(ValueError, match="(?i)log"):
        parse(["--log-level", "bogus"])


def test_promote_batch_must_be_positive():
    # promote_batch=0 makes every promote call "full" (0 >= 0): the promoter spins without sleeping.
    with pytest.raises(ValueError, match="(?i)batch"):
        Config(promote_batch=0)


def test_without_authentication_only_loopback_is_served_unless_allowed():
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ValueError, match="--allow-unauthenticated") as refused:
            Config(host=host)
        assert "--auth-tokens-file" in str(refused.value)
        assert Config(host=host, allow_unauthenticated=True, redis_url="redis://r:6379/0").host == host
    for host in ("127.0.0.1", "::1", "localhost"):
        assert Config(host=host).host == host


def test_the_embedded_store_serves_loopback_only():
    """Without --redis-url every replica keeps a world of its own in memory: fine for a try-out on this machine,
    never for a port others reach (N pods, N separate worlds, all lost on restart)."""
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ValueError, match="--redis-url") as refused:
            Config(host=host, allow_unauthenticated=True)
        assert "embedded" in str(refused.value)
        assert Config(host=host, allow_unauthenticated=True, redis_url="redis://r:6379/0").host == host
        # Sentinels are a Redis too: the URL (only options then) may be left out
        assert Config(host=host, allow_unauthenticated=True, redis_sentinels="s1:26379",
                      redis_sentinel_master="m").host == host
    assert Config(host="127.0.0.1").redis_url is None


def test_sentinel_flags_and_variables():
    c = parse(["--redis-sentinels", "s1:26379,[::1]:26380", "--redis-sentinel-master", "mymaster",
               "--redis-min-replica-acks", "1"], {"DT_REDIS_SENTINEL_PASSWORD": "pw",
                                                  "DT_REDIS_REPLICA_ACK_TIMEOUT_MS": "250"})
    assert cfg.sentinel_addresses(c.redis_sentinels) == [("s1", 26379), ("::1", 26380)]
    assert (c.redis_sentinel_master, c.sentinel_password, c.redis_min_replica_acks, c.redis_replica_ack_timeout_ms) \
        == ("mymaster", "pw", 1, 250)
    assert c.redis_url == "redis://localhost/0"  # only options: database 0, no credentials, no TLS
    c = parse([], {"DT_REDIS_SENTINELS": "s:1", "DT_REDIS_SENTINEL_MASTER": "m", "DT_REDIS_URL": "rediss://:p@x/3"})
    assert (c.redis_sentinels, c.redis_sentinel_master, c.redis_url) == ("s:1", "m", "rediss://:p@x/3")
    assert c.redis_min_replica_acks == 0


def test_the_sentinel_password_may_come_from_a_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    c = Config(redis_sentinels="s:1", redis_sentinel_master="m", redis_sentinel_password_file=str(secret))
    assert c.sentinel_password == "s3cret"


@pytest.mark.parametrize("options, named", [
    ({"redis_sentinels": "s:1"}, "--redis-sentinel-master"),
    ({"redis_sentinels": "s:1", "redis_sentinel_master": "m", "redis_cluster": True, "redis_url": "redis://r/0"},
     "--redis-cluster"),
    ({"redis_sentinels": "s", "redis_sentinel_master": "m"}, "not HOST:PORT"),
    ({"redis_sentinels": "s:99999", "redis_sentinel_master": "m"}, "not HOST:PORT"),
    ({"redis_sentinel_master": "m"}, "only apply with --redis-sentinels"),
    ({"redis_sentinels": "s:1", "redis_sentinel_master": "m", "redis_sentinel_password": "a",
      "redis_sentinel_password_file": "/etc/hostname"}, "not both"),
    ({"redis_sentinels": "s:1", "redis_sentinel_master": "m", "redis_sentinel_password_file": "/no/such"},
     "no such file"),
    ({"redis_min_replica_acks": 1}, "embedded store has no replicas"),
    ({"redis_url": "redis://r/0", "redis_min_replica_acks": -1}, "must not be negative"),
    ({"redis_url": "redis://r/0", "redis_replica_ack_timeout_ms": 0}, "between 1 and 60000"),
])
def test_sentinel_and_replica_options_that_do_not_go_together(options, named):
    with pytest.raises(ValueError, match=named):
        Config(**options)


@pytest.mark.parametrize("env, value, named", [("DT_PORT", "abc", "DT_PORT"), ("DT_LEASE_SECONDS", "soon", "DT_LEASE_SECONDS"),
                                               ("DT_PARTITIONS", "1.5", "DT_PARTITIONS")])
def test_a_bad_environment_value_names_its_variable(env, value, named):
    with pytest.raises(ValueError) as bad:
        parse([], {env: value})
    assert str(bad.value).startswith(f"{named}: {value!r} is not a valid")


@pytest.mark.parametrize("url, says", [
    ("http://h:1", "scheme"), ("redis://:x@h:notaport/0", "port"), ("redis://h:1/zero", "database"),
    ("rediss://h:1/0?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs"), ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    ("redis:///0", "no host"), ("redis://h:1?db=one", "db=")])
def test_a_bad_redis_url_is_refused_naming_the_flag(url, says):
    with pytest.raises(ValueError) as bad:
        Config(redis_url=url)
    assert str(bad.value).startswith("--redis-url (DT_REDIS_URL): ") and says in str(bad.value)


def test_passwords_are_redacted_for_logs():
    assert cfg.redacted("rediss://:s3cret@host:6380/0") == "rediss://:***@host:6380/0"
    assert cfg.redacted("redis://user:pw@host/1?ssl_cert_reqs=none") == "redis://user:***@host/1?ssl_cert_reqs=none"
    assert cfg.redacted("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize("url, shown", [
    ("redis://host:6379/0?password=s3cret", "redis://host:6379/0?password=***"),
    ("rediss://host/0?ssl_cert_reqs=none&username=app&password=s3cret",
     "rediss://host/0?ssl_cert_reqs=none&username=app&password=***"),
    ("redis://host/0?password=s3cret&password=s3cret2", "redis://host/0?password=***&password=***"),
    ("redis://host/0?pass%77ord=s3cret", "redis://host/0?password=***"),
    ("redis://u:s3cret@host/0?password=s3cret", "redis://u:***@host/0?password=***"),
    ("redis://u:s3c:ret@host/0", "redis://u:***@host/0"),  # a colon in the password
    ("redis://u:s3c%40ret@host/0", "redis://u:***@host/0"),  # an encoded @ in the password
    ("redis://:s3cret@host", "redis://:***@host"),
    ("redis://user@host", "redis://user@host"),  # a user name alone is no secret
])
def test_a_password_in_any_url_form_is_redacted(url, shown):
    assert cfg.redacted(url) == shown
    assert "s3c" not in cfg.redacted(url)


def test_processes_flag_and_environment():
    assert parse([]).processes == 1 and parse([]).process == 0
    url = ["--redis-url", "redis://h:1/0"]
    assert parse(url, {"DT_PROCESSES": "4"}).processes == 4
    assert parse([*url, "--processes", "2"], {"DT_PROCESSES": "4"}).processes == 2
    with pytest.raises(ValueError, match="DT_PROCESSES"):
        parse(url, {"DT_PROCESSES": "two"})
