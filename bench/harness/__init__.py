"""The benches' harness."""
