"""Tests of the sorting layer."""
