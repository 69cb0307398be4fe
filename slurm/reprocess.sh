#!/bin/bash
# Overnight reprocessing of an experiment: show where it stands, then submit what is left
# (a SLURM array of MPI predict jobs and a summary job after it).  Safe to run again, e.g.
# every night from cron on a login node: finished runs are skipped, queued ones left alone,
# interrupted ones resume from their checkpoints.
#
# usage: slurm/reprocess.sh EXPERIMENT.toml [--dry-run]
set -euo pipefail

job="${1:?usage: reprocess.sh EXPERIMENT.toml [--dry-run]}"
shift

hpcdiff status "$job" || echo "reprocess.sh: no status yet for $job" >&2
hpcdiff reprocess "$job" "$@"
