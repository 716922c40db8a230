"""Many runs: planning and running a sweep's jobs, batching them, resuming, comparing and
reporting them."""
