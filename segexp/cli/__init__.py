"""Command shells: Hydra/argparse glue, exit codes and the signal policy; the work is in the packages below."""
