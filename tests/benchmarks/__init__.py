"""Tests of the benchmarks, their result files and pages, and the GPU check."""
