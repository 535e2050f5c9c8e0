"""One module per `qmia-fast` subcommand; each is imported only when its command runs."""
