#!/usr/bin/env bash
# Install the real programs the tests drive (nginx, caddy, chromium, redis-server, PostgreSQL, CJK fonts) from Debian
# when missing.
set -euo pipefail
declare -A package=([nginx]=nginx-light [chromium]=chromium [redis-server]=redis-server [openssl]=openssl
                    [systemd-analyze]=systemd [caddy]=caddy)
missing=()
for program in "${!package[@]}"; do
    command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ] || missing+=("${package[$program]}")
done
# PostgreSQL's server programs (initdb, postgres) live under /usr/lib/postgresql/<version>/bin, not on PATH.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
# CJK glyphs for the page's Chinese UI in headless Chromium (screenshots).
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || missing+=(fonts-noto-cjk)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing from Debian: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
