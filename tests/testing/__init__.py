"""Tests of the testing kit, aot_losses.testing."""
