"""warren for Python test suites: the broker binary, a small API over its HTTP control API
(`Broker`), and a pytest plugin (`warren_broker.pytest_plugin`, registered on install)."""

from .broker import Broker, BrokerError, Connection, Events, FreshVhost, TlsFiles, find_binary

__all__ = ["Broker", "BrokerError", "Connection", "Events", "FreshVhost", "TlsFiles", "find_binary"]
