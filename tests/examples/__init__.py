"""Tests of the examples layer."""
