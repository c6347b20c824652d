"""The `qwen-audio-jax` command line (cli/main.py); one module per group of subcommands."""
