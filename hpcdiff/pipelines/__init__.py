"""The jobs: glue from a validated job config to stages to outputs."""
