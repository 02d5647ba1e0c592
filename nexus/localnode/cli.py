"""``nexus localnode``: run the local node agent against a control plane until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from nexus.localnode.config import (
    DEFAULT_ADDRESS_RANGE,
    DEFAULT_NODE_NAME,
    DEFAULT_SELECTOR,
    LocalNodeConfig,
)

HELP = "run pods of astromesh node Deployments as local processes (a kubelet for dev and tests)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LocalNodeConfig()
    parser.add_argument("--kubeconfig", help="kubeconfig file (else in-cluster or ~/.kube/config)")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME, help="name of the Node object")
    parser.add_argument(
        "--address-range",
        default=DEFAULT_ADDRESS_RANGE,
        help="pod addresses: a 127.0.0.0/8 network or first-last range",
    )
    parser.add_argument("--host-ip", default=d.host_ip, help="the node's address (hostIP)")
    parser.add_argument("--max-pods", type=int, default=d.max_pods, help="pods beyond stay Pending")
    parser.add_argument("--root", help="folder for the pods' files (default: in the temp dir)")
    parser.add_argument("--selector", default=DEFAULT_SELECTOR, help="label selector of the pods")
    parser.add_argument(
        "--namespace-selector",
        default=None,
        help="schedule only pods of namespaces with these labels (default: any namespace)",
    )
    parser.add_argument(
        "--restart-backoff",
        type=float,
        default=d.restart_backoff_base,
        help="seconds before the first restart of a crashed process (doubles up to the cap)",
    )
    parser.add_argument(
        "--restart-backoff-cap", type=float, default=d.restart_backoff_cap, help="seconds"
    )
    parser.add_argument("--log-level", default="info", help="the agent's log level")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")


def config_from_args(args: argparse.Namespace) -> LocalNodeConfig:
    return LocalNodeConfig(
        node_name=args.node_name,
        address_range=args.address_range,
        host_ip=args.host_ip,
        max_pods=args.max_pods,
        root=Path(args.root) if args.root else None,
        label_selector=args.selector,
        namespace_selector=args.namespace_selector or None,
        restart_backoff_base=args.restart_backoff,
        restart_backoff_cap=max(args.restart_backoff_cap, args.restart_backoff),
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``localnode`` subcommand to the ``nexus`` command."""
    add_arguments(sub.add_parser("localnode", help=HELP, description=HELP))


async def _kube_configuration(kubeconfig: str | None) -> Any:
    from kubernetes_asyncio import client as k8s_client
    from kubernetes_asyncio import config as k8s_config

    cfg = k8s_client.Configuration()
    if kubeconfig:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        return cfg
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config(client_configuration=cfg)
    return cfg


async def serve(config: LocalNodeConfig, kubeconfig: str | None) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    from kubernetes_asyncio import client as k8s_client

    from nexus.localnode.agent import LocalNodeAgent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cfg = await _kube_configuration(kubeconfig)
    async with k8s_client.ApiClient(cfg) as api, LocalNodeAgent(api, config):
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    from nexus.runtime.logging import configure_logging

    try:
        config = config_from_args(args)
        from nexus.localnode.addresses import parse_range

        parse_range(config.address_range)
    except ValueError as exc:
        print(f"nexus localnode: {exc}", file=sys.stderr)
        return 2
    configure_logging(json=args.log_format == "json", level=args.log_level)
    try:
        asyncio.run(serve(config, args.kubeconfig))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"nexus localnode: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nexus localnode", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
