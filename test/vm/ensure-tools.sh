#!/usr/bin/env bash
# Installs what the VM harness needs (Debian packages) when it is missing.
exec "$(dirname "$0")/../../hack/ensure-packages.sh" vm
