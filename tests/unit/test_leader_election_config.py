"""LeaderElectionConfig: controller-runtime defaults; timings that allow split brain refused."""

from __future__ import annotations

import dataclasses
import math
import socket

import pytest

from nexus.runtime.leader_election import JITTER_FACTOR, LeaderElectionConfig


def test_defaults_are_controller_runtimes() -> None:
    cfg = LeaderElectionConfig("nexus-lock", "nexus-system")
    assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (15.0, 10.0, 2.0)
    assert cfg.release_on_cancel is True
    assert cfg.lease_duration_seconds == 15
    assert cfg.call_timeout == 5.0


def test_default_identity_is_hostname_and_unique_suffix() -> None:
    a = LeaderElectionConfig("l", "ns")
    b = LeaderElectionConfig("l", "ns")
    assert a.identity.startswith(f"{socket.gethostname()}_")
    assert a.identity != b.identity


def test_lease_duration_seconds_rounds_up() -> None:
    cfg = LeaderElectionConfig("l", "ns", lease_duration=3.2, renew_deadline=2, retry_period=0.5)
    assert cfg.lease_duration_seconds == 4


def test_call_timeout_is_half_the_renew_deadline_but_at_least_one_second() -> None:
    cfg = LeaderElectionConfig("l", "ns", lease_duration=3, renew_deadline=1.5, retry_period=1)
    assert cfg.call_timeout == 1.0


def test_is_frozen() -> None:
    cfg = LeaderElectionConfig("l", "ns")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lease_duration = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease_duration": 10, "renew_deadline": 10}, "lease_duration .* greater than renew"),
        ({"lease_duration": 5, "renew_deadline": 8}, "lease_duration .* greater than renew"),
        ({"renew_deadline": 2.4, "retry_period": 2}, r"renew_deadline .* 1\.2 \* retry_period"),
        ({"renew_deadline": 2.0, "retry_period": 2}, r"renew_deadline .* 1\.2 \* retry_period"),
        ({"retry_period": 0}, "retry_period must be a positive"),
        ({"retry_period": -1}, "retry_period must be a positive"),
        ({"lease_duration": math.inf}, "lease_duration must be a positive"),
        ({"renew_deadline": math.nan}, "renew_deadline must be a positive"),
        ({"identity": ""}, "identity must not be empty"),
    ],
)
def test_invalid_timings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeaderElectionConfig("l", "ns", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["lease_name", "lease_namespace"])
def test_empty_names_are_refused(field: str) -> None:
    kwargs = {"lease_name": "l", "lease_namespace": "ns", field: ""}
    with pytest.raises(ValueError, match=f"{field} must not be empty"):
        LeaderElectionConfig(kwargs["lease_name"], kwargs["lease_namespace"])


def test_the_inequalities_are_strict_and_exactly_as_documented() -> None:
    retry = 1.0
    renew = JITTER_FACTOR * retry
    # On the boundary: refused (a leader could give up exactly as a standby takes over).
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElectionConfig("l", "ns", lease_duration=2, renew_deadline=renew, retry_period=retry)
    with pytest.raises(ValueError, match="lease_duration"):
        LeaderElectionConfig("l", "ns", lease_duration=1.5, renew_deadline=1.5, retry_period=1)
    # Just inside both: accepted, and kept exactly as given.
    tight_renew = renew + 1e-9
    cfg = LeaderElectionConfig(
        "l", "ns", lease_duration=tight_renew + 1e-9, renew_deadline=tight_renew, retry_period=retry
    )
    assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (
        tight_renew + 1e-9,
        tight_renew,
        retry,
    )
    assert cfg.lease_duration > cfg.renew_deadline > JITTER_FACTOR * cfg.retry_period
