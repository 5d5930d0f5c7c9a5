#!/usr/bin/env bash
# Provisioning every worker VM gets (vms.provision lists the scripts to run, in order).
# Runs as the SSH user (ssh.user) inside the VM; use sudo for system changes. Keep it
# idempotent: `tworker vagrant reprovision` runs it again on VMs that already had it.
set -euo pipefail
mkdir -p "$HOME/builds"
echo "provisioned by tworker at $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$HOME/.tworker-provisioned"
