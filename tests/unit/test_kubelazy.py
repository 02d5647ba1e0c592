"""nexus.kubelazy: kubernetes-asyncio's generated classes are imported when first used."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.strip()


def test_lazy_packages_import_only_what_is_used() -> None:
    out = run(
        """
        import sys
        from nexus import kubelazy  # the package installs it
        assert kubelazy.installed() and not kubelazy.install()
        import nexus.app  # everything the manager imports
        from kubernetes_asyncio import client, config
        loaded = [m for m in sys.modules if m.startswith("kubernetes_asyncio.client.")]
        before = len(loaded)
        assert client.Configuration.__name__ == "Configuration"
        assert client.ApiClient.__name__ == "ApiClient"
        assert client.V1ObjectMeta(name="x").name == "x"
        assert client.models.V1Pod.__name__ == "V1Pod"
        assert client.ApiException.__name__ == "ApiException"
        assert callable(config.load_kube_config)
        import kubernetes_asyncio
        assert kubernetes_asyncio.__version__
        try:
            client.NoSuchThing
        except AttributeError:
            pass
        else:
            raise AssertionError("an unknown name must raise AttributeError")
        print(before, len([m for m in sys.modules if m.startswith("kubernetes_asyncio")]))
        """
    )
    before, total = (int(x) for x in out.split())
    assert before < 30  # of the 850 modules the package imports eagerly
    assert total < 40


def test_install_is_a_no_op_once_the_package_is_imported() -> None:
    out = run(
        """
        import kubernetes_asyncio
        from nexus import kubelazy
        print(kubelazy.install(), kubelazy.installed())
        """
    )
    assert out == "False False"
