"""The yardstick: metrics of a result against its content and style, `nstexp evaluate`."""
