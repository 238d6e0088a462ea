"""TLS toward upstreams: the client side of ``https://`` and ``wss://`` connections.

The gateway never ends TLS for visitors (an ingress or load balancer in front does, see
``proxy.trusted_proxies``); it starts TLS toward an ``https://`` upstream, checked as
``sites[].tls`` says (:class:`gateway.options.UpstreamTLS`).

Guarantees:

- With ``verify`` (the default) no request is sent unless the upstream's chain ends in a CA of
  ``ca_file`` (or, without one, of the system's store) and the certificate names
  ``server_name`` (or, without one, the upstream URL's host). ``server_name`` is also the SNI.
- With ``verify: false`` the connection is encrypted but the peer is not authenticated:
  anyone on the path can answer in the upstream's name. check-config says so for every such
  site.
- One :class:`ssl.SSLContext` per distinct setting, built when first used and shared by every
  connection with that setting (a context holds the parsed CA store, which is costly to
  build per connection). A reload starts a new :class:`ClientContexts`, so a CA file replaced
  on disk is read again then.

Only the standard library's ``ssl``: config.py checks ``ca_file`` with :func:`ca_file_problem`,
the same loader the contexts use, so a file check-config accepts is one the gateway can load.
"""

from __future__ import annotations

import ssl

from .options import UpstreamTLS

__all__ = ["ClientContexts", "ca_file_problem", "client_context", "server_hostname"]


def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """A client context for ``tls``. Raises OSError or ssl.SSLError when ``ca_file`` cannot be
    loaded (config.py has checked it, but the file may have changed since)."""
    if not tls.verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # The defaults of an HTTPS client: CERT_REQUIRED, check_hostname, TLS 1.2 at least, and
    # with no ca_file the system's CA store (ca-certificates in the image).
    return ssl.create_default_context(cafile=tls.ca_file)


def server_hostname(tls: UpstreamTLS, host: str) -> str:
    """The name to send in SNI and to check the certificate against, for an upstream ``host``."""
    return tls.server_name or host


class ClientContexts:
    """The contexts of one configuration, one per distinct :class:`UpstreamTLS`, built when
    first needed."""

    def __init__(self) -> None:
        self._built: dict[UpstreamTLS, ssl.SSLContext] = {}

    def get(self, tls: UpstreamTLS) -> ssl.SSLContext:
        context = self._built.get(tls)
        if context is None:
            context = self._built[tls] = client_context(tls)
        return context


def ca_file_problem(path: str) -> str | None:
    """What is wrong with ``path`` as a ``ca_file``, worded for check-config, or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except FileNotFoundError:
        return f"{path} does not exist (give the path of a PEM file of CA certificates)"
    except IsADirectoryError:
        return f"{path} is a directory (give the path of a PEM file of CA certificates)"
    except PermissionError:
        return f"{path} cannot be read by this user (make it readable, e.g. mode 0644)"
    except ssl.SSLError:
        return (
            f"{path} holds no PEM certificate (it must hold '-----BEGIN CERTIFICATE-----' "
            "blocks; convert a DER file with: openssl x509 -inform der -in ca.der -out ca.pem)"
        )
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    if context.cert_store_stats()["x509_ca"] == 0:
        return (
            f"{path} holds no CA certificate, only a server's own (give the certificate of the "
            "CA that issued the upstream's certificate: the one with CA:TRUE)"
        )
    return None
