"""TLS for the double: a throwaway CA and a server certificate, made with trustme (a test dependency).

    server_ctx, ca_path = make_tls(tmp_path)              # CA + certificate for 127.0.0.1, localhost, ::1
    double = OllamaDouble(tls=server_ctx).start()         # double.url == "https://127.0.0.1:PORT"
    requests.get(double.url + "/api/version", verify=ca_path)
    http.client.HTTPSConnection("127.0.0.1", double.port, context=client_context(ca_path))

Hand `ca_path` (a PEM bundle holding only the CA) to whatever has to trust the double, e.g. a gateway's
CA-bundle setting or REQUESTS_CA_BUNDLE. Only this module needs trustme; the rest of the double stays stdlib.
"""

from __future__ import annotations

import atexit
import shutil
import ssl
import tempfile
from pathlib import Path

HOSTS = ("127.0.0.1", "localhost", "::1")


def make_tls(directory=None, hosts=HOSTS) -> tuple[ssl.SSLContext, str]:
    """(server-side SSLContext for OllamaDouble(tls=...), path of the CA bundle PEM file that trusts it).

    A new CA every call. The CA file goes into `directory` (e.g. pytest's tmp_path) as ca.pem; without
    one, into a temporary folder removed when the interpreter exits. The certificate names `hosts`
    (IP addresses or DNS names). The context speaks TLS 1.2 and 1.3 and offers ALPN http/1.1 only.
    """
    import trustme  # here, not at the top: only the HTTPS mode needs it

    ca = trustme.CA(organization_name="Ollama double test CA")
    leaf = ca.issue_cert(*hosts)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    leaf.configure_cert(context)
    if directory is None:
        directory = tempfile.mkdtemp(prefix="ollama-double-tls-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = Path(directory) / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return context, str(path)


def client_context(ca_path: str) -> ssl.SSLContext:
    """A client-side SSLContext that trusts only the CA in `ca_path` (hostnames and IPs are checked)."""
    return ssl.create_default_context(cafile=ca_path)
