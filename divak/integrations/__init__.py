"""Integrations with services beside OpenTelemetry.

Sentry: :mod:`divak.integrations.sentry`.
"""
