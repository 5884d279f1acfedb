"""Test suite: mirrors the packages (export, service, loadtest, deploy)."""
