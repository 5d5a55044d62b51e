#!/usr/bin/env bash
# Installs the tools the tests drive besides the mail servers (those are
# test/lab/install.sh's): Prometheus with promtool, Alertmanager with amtool,
# Chromium for the browser test of the probe pages, and blackbox_exporter,
# which the performance harness measures us against. Debian, as root.
#
# Idempotent: returns at once when every binary is present. Package scripts
# are kept from starting the system-wide daemons; tests run their own.
set -euo pipefail

packages=(prometheus prometheus-alertmanager prometheus-blackbox-exporter chromium fonts-dejavu-core)
binaries=(/usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-alertmanager /usr/bin/amtool /usr/bin/prometheus-blackbox-exporter /usr/bin/chromium)

have_everything() {
	local b
	for b in "${binaries[@]}"; do
		[[ -x $b ]] || return 1
	done
}

if have_everything; then
	echo "tools install: prometheus, alertmanager, blackbox_exporter and chromium already present"
	exit 0
fi
# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
apt_install "${packages[@]}"

if ! have_everything; then
	echo "tools install: still missing after apt-get:" >&2
	for b in "${binaries[@]}"; do [[ -x $b ]] || echo "  $b" >&2; done
	exit 1
fi
