"""``python -m nexus.runtime.webhook --host SVC.NS.svc --out DIR``: a self-signed CA and a
serving pair (``tls.crt``, ``tls.key``, ``ca.crt``) for a webhook certificate Secret."""

from nexus.runtime.webhook.certs import main

raise SystemExit(main())
