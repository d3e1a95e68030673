"""Tools beside the library: benchmarks and helpers that the `medbench` CLI runs but nothing in
`bench/` imports (the layout test checks that)."""
