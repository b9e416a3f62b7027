"""Emulator contract tests and third-party-client tests."""
