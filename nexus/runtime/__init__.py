"""nexus.runtime: controller-runtime for asyncio Python.

A small framework for Kubernetes operators on kubernetes-asyncio, with controller-runtime's
concepts and names: a :class:`Manager` owns a shared informer :class:`Cache`, a :class:`Client`,
probes, Prometheus metrics and leader election; each :class:`Controller` drains a rate-limited
:class:`WorkQueue` of :class:`Request` keys into a :class:`Reconciler`, which returns a
:class:`Result`. It imports nothing from the application built on it.

Guarantees in one place:
  * a request is never reconciled by two workers at once; changes during a reconcile cause one
    more reconcile afterwards, never a lost one;
  * failures retry with per-request exponential backoff (5 ms -> 1000 s) under a global token
    bucket (10 qps, burst 100); ``Result(requeue_after=...)`` schedules the next run;
  * informers relist after ``410 Gone``, back off on errors, detect silent watch streams, and
    never die silently; objects from the first list are queued after live changes;
  * finalizer helpers never drop another controller's finalizer;
  * with leader election, controllers run in one process at a time; the Lease is released on a
    graceful stop so a standby takes over at once;
  * admission webhooks (:mod:`nexus.runtime.webhook`) serve on every replica, always answer
    (a failing or slow handler is a clear refusal), and pick up a rotated certificate without
    a restart.
"""

from nexus.runtime.builder import Builder
from nexus.runtime.cache import Cache, CacheSyncTimeout
from nexus.runtime.client import ApiError, Client, retry_on_conflict
from nexus.runtime.controller import Controller, ControllerOptions
from nexus.runtime.events import EventRecorder
from nexus.runtime.finalizers import add_finalizer, has_finalizer, remove_finalizer
from nexus.runtime.handler import (
    enqueue_for_object,
    enqueue_for_owner,
    enqueue_from_func,
    enqueue_from_labels,
)
from nexus.runtime.informer import EventHandler, Informer, InformerOptions
from nexus.runtime.leader_election import LeaderElectionConfig, LeaderElectionLost, LeaderElector
from nexus.runtime.manager import Manager, ManagerOptions, Runnable
from nexus.runtime.ownwrites import OwnWrites, RecordingClient
from nexus.runtime.ratelimiter import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    RateLimiter,
    default_controller_rate_limiter,
)
from nexus.runtime.reconcile import Reconciler, Request, RequeueAfterError, Result, TerminalError
from nexus.runtime.resource import Resource
from nexus.runtime.workqueue import LOW_PRIORITY, NORMAL_PRIORITY, QueueShutDown, WorkQueue

__all__ = [
    "LOW_PRIORITY",
    "NORMAL_PRIORITY",
    "ApiError",
    "BucketRateLimiter",
    "Builder",
    "Cache",
    "CacheSyncTimeout",
    "Client",
    "Controller",
    "ControllerOptions",
    "EventHandler",
    "EventRecorder",
    "Informer",
    "InformerOptions",
    "ItemExponentialFailureRateLimiter",
    "LeaderElectionConfig",
    "LeaderElectionLost",
    "LeaderElector",
    "Manager",
    "ManagerOptions",
    "MaxOfRateLimiter",
    "OwnWrites",
    "QueueShutDown",
    "RateLimiter",
    "Reconciler",
    "RecordingClient",
    "Request",
    "RequeueAfterError",
    "Resource",
    "Result",
    "Runnable",
    "TerminalError",
    "WorkQueue",
    "add_finalizer",
    "default_controller_rate_limiter",
    "enqueue_for_object",
    "enqueue_for_owner",
    "enqueue_from_func",
    "enqueue_from_labels",
    "has_finalizer",
    "remove_finalizer",
    "retry_on_conflict",
]
