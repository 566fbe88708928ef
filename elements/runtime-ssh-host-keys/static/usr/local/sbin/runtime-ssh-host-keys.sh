#!/bin/sh
# Generate any SSH host key the machine is missing (the image ships without them, so each
# instance gets its own). Run at boot by ssh-keygen.service, before the SSH server starts.
set -eu
if ! command -v ssh-keygen >/dev/null 2>&1; then
    echo "runtime-ssh-host-keys: ssh-keygen is not installed" >&2
    exit 0
fi
mkdir -p /etc/ssh
ssh-keygen -A
