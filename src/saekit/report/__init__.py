"""Reporting: tables and plots."""
