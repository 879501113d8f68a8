#!/usr/bin/env bash
# Installs the Debian packages the network-namespace labs use as real peers and load
# generators: nginx with its stream module and HAProxy (proxies to compare against and
# backends), wrk (load), tcpdump (wire format), keepalived (VRRP peer).
#
# Idempotent: installs only what is missing, and runs apt-get update only then.
# Needs root. Usage: hack/install-lab-deps.sh
set -euo pipefail

# One package per line, kept sorted, so branches that add packages merge trivially.
PACKAGES="
haproxy
iproute2
keepalived
libnginx-mod-stream
nginx
tcpdump
wrk
"

missing=()
for p in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-lab-deps: missing Debian packages: ${missing[*]}; run as root to install them" >&2
	exit 1
fi
echo "install-lab-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Package scripts must not start the daemons on the host: the labs start their own.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y --no-install-recommends "${missing[@]}"
