"""tpu_setup: create, provision, run on and tear down Cloud TPU VMs and pod slices.

Every step is a `gcloud` (or `gcloud storage`) command line that `--dry-run` prints before anything
is executed, so a pod run is one command whose effects can be read first. See tpu_setup/README.md.
"""
