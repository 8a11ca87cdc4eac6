"""Tests of the studies layer."""
