#!/usr/bin/env bash
# Installs what tests/test_cluster.py needs for its single-node SLURM cluster on localhost:
# Debian's slurm-wlm (slurmctld, slurmd, the client commands) and munge. Exits non-zero with
# the reason on stderr when it cannot (not root, no apt-get), so the test can skip with it.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "installing slurm-wlm and munge needs root" >&2; exit 3
fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get on this machine to install slurm-wlm and munge" >&2; exit 3
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
